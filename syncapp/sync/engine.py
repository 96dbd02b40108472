"""One run of one mapping: observe → plan → apply, and the outcome service.py records on the mapping.

observe.py reads both sides into pairs and writes nothing; plan.py decides one Action per pair as a
pure function; the mass-delete guard filters the planned deletions; apply.py carries the actions out
one at a time, each with its intent, its call, its link update and its log entry. A dry run is the
same code without the last step (MappingSync.preview). Anything unexpected with one item is logged
as "could not read" with its id and title and the others go on; the cursors advance (the item is
read again with the next full read). The run stops between items at its deadline, or when Raynet or
Graph asks to wait longer than the run has left (the mapping then waits: UserMapping.not_before).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from syncapp.models import EffectivePolicy, EventLink, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError, UnreadableItem, unreadable
from syncapp.providers.outlook import OutlookClient
from syncapp.providers.raynet import RaynetClient
from syncapp.sync.apply import BATCH_SIZE, Applier
from syncapp.sync.deletions import IdScan
from syncapp.sync.observe import Observation, Observer, RaynetDirectory
from syncapp.sync.plan import (
    ACTIVE,
    CREATES,
    DELETIONS,
    TO_RAYNET,
    Action,
    Kind,
    Pair,
    nearest_first,
    plan,
    too_many_deletions,
)
from syncapp.sync.reasons import Reason, render_reason_en
from syncapp.sync.runlog import RunLog

logger = logging.getLogger("syncapp.sync")

# Interrupted creates and held deletions, built once: every run (an idle one too) asks, and most of the
# query's cost is Django building its filter, not PostgreSQL answering it.
UNFINISHED_LINKS = EventLink.objects.filter(
    Q(outlook_event_id=None) | Q(raynet_id=None) | ~Q(held_gone=""), state=ACTIVE
)


@dataclass
class Outcome:
    """What a run means for the mapping's cursors and health; service.py writes it on the mapping."""

    released: bool  # nothing held back: the cursors may advance
    delta_link: str
    window_start: date
    flag_reason: str = ""  # the mass-delete guard held deletions back
    used_approval: bool = False  # an admin's approval of held deletions was used up
    not_before: datetime | None = None  # Raynet or Graph asked us to wait this long
    stopped_at_deadline: bool = False
    deferred: int = 0  # creates in Raynet left for the first sync's budget on the next days


@dataclass(frozen=True)
class PlannedAction:
    """One line of a dry run's plan (the portal's first-sync preview)."""

    direction: str  # "to_outlook" or "to_raynet"
    action: str  # create, update, delete, cancel, ignore, restore, skip
    title: str
    starts_at: datetime | None
    reason_code: str
    reason_params: dict

    @property
    def reason_text(self) -> str:
        from syncapp.sync.reasons import render_reason

        return render_reason(self.reason_code, self.reason_params)


@dataclass
class MappingPlan:
    mapping: UserMapping
    actions: list[PlannedAction] = field(default_factory=list)
    # (title, starts_at, attendees) of each event whose create or update makes Outlook send invitations.
    invitations: list[tuple[str, datetime | None, list[str]]] = field(default_factory=list)
    held_deletions: int = 0  # deletions the mass-delete guard would hold back for an admin

    def counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {"to_outlook": {}, "to_raynet": {}}
        for action in self.actions:
            per = counts[action.direction]
            per[action.action] = per.get(action.action, 0) + 1
        return counts


@dataclass
class MappingSync:
    mapping: UserMapping
    policy: EffectivePolicy
    raynet: RaynetClient
    outlook: OutlookClient
    log: RunLog
    zone: ZoneInfo
    window: tuple[datetime, datetime]
    directory: RaynetDirectory
    deadline: float | None = None  # a time.monotonic() instant
    # During a mapping's first sync: the Raynet requests first syncs spent today before this run (None: not a
    # first sync, no cap). The cap is read from the connection as the run goes: its limit comes with each answer.
    first_sync_spent: int | None = None

    def __post_init__(self) -> None:
        self.raynet_spent_before = 0
        # What the run needs before it reads: interrupted creates and held deletions. The rest is loaded by
        # the observer, all of it for a whole-window read, else only what the changes touch (load_links).
        links = list(UNFINISHED_LINKS.filter(mapping_id=self.mapping.pk))
        self.applier = Applier(
            mapping=self.mapping,
            policy=self.policy,
            raynet=self.raynet,
            outlook=self.outlook,
            log=self.log,
            zone=self.zone,
            directory=self.directory,
            links=links,
        )

    def observer(self) -> Observer:
        return Observer(
            mapping=self.mapping,
            policy=self.policy,
            raynet=self.raynet,
            outlook=self.outlook,
            window=self.window,
            links=self.applier.links,
            directory=self.directory,
            approved=self.mapping.mass_delete_approved,
        )

    # --- a run ----------------------------------------------------------------------------------------
    def run(self, *, full: bool, raynet_changes: list | None, id_scan: IdScan | None = None) -> Outcome:
        self.raynet_spent_before = self.raynet.responses
        # One concurrency slot per API for the whole run, not one per request (ProviderSession.burst).
        with self.raynet.session.burst(), self.outlook.session.burst():
            try:
                self.applier.finish_pending_creates()
                actions, outcome = self.decide(full=full, raynet_changes=raynet_changes, id_scan=id_scan)
                self.apply_all(actions, outcome)
                if outcome.deferred:
                    params = {"count": outcome.deferred, "cap": self.raynet.connection.first_sync_cap}
                    self.log.record("later", Reason.FIRST_SYNC_BUDGET, params, direction=TO_RAYNET)
            finally:
                self.applier.flush()  # what the run did is stored before its outcome (or its failure) is
        return outcome

    def decide(
        self, *, full: bool, raynet_changes: list | None, id_scan: IdScan | None
    ) -> tuple[list[Action], Outcome]:
        """Read and plan. The observation is let go on return: the actions hold what each needs of it."""
        observation = self.observer().observe(full=full, raynet_changes=raynet_changes, id_scan=id_scan)
        self.applier.relink(observation.relinked)
        for item in observation.unreadable:
            self.log_unreadable(item)
        actions = self.plan_all(observation)
        self.log_later(actions)
        outcome = Outcome(released=True, delta_link=observation.delta.delta_link, window_start=self.window[0].date())
        actions = self.guard(actions, outcome)
        if self.first_sync_spent is not None:
            actions = nearest_first(actions, timezone.now())
        return actions, outcome

    def allowance_spent(self) -> bool:
        """The first syncs' share of today's Raynet budget is used up (a create may pass it by its own cost)."""
        if self.first_sync_spent is None:
            return False
        spent = self.first_sync_spent + self.raynet.responses - self.raynet_spent_before
        return spent >= self.raynet.connection.first_sync_cap

    def plan_all(self, observation: Observation) -> list[Action]:
        actions = []
        for pair in observation.pairs:
            try:
                actions.append(plan(pair, self.policy, observation.facts))
            except Exception as error:  # one item's data, not the run's: it is logged and skipped
                logger.warning("could not plan %r: %r", pair, error)
                self.log_unreadable(pair_unreadable(pair, error), link=pair.link)
        # Deletions last, after every update had its chance (a restore wins over a deletion).
        return sorted(actions, key=lambda action: action.kind in DELETIONS)

    def log_later(self, actions: list[Action]) -> None:
        """Occurrences beyond the horizon: one entry a run, not one per occurrence (a daily series has hundreds)."""
        later = sum(1 for action in actions if action.kind == Kind.LATER)
        if later:
            params = {"count": later, "days": settings.OCCURRENCE_HORIZON_DAYS}
            self.log.record("later", Reason.OCCURRENCES_LATER, params, direction=TO_RAYNET)

    def guard(self, actions: list[Action], outcome: Outcome) -> list[Action]:
        """The mass-delete guard: too many deletions at once wait for an admin (SPEC 5).

        The held deletions are remembered on their links (EventLink.held_gone) and the cursors move on: the
        polls that follow neither read the window again nor look each held record up (observe's recall_held
        brings them back when the admin approves). While a hold waits, every new deletion joins it.
        """
        deletions = [action for action in actions if action.kind in DELETIONS]
        approved = self.mapping.mass_delete_approved
        held = [link for link in self.applier.links if link.held_gone and link.state == ACTIVE]
        if not deletions:
            if held and not approved:
                self.flag(outcome, len(held))
            return actions
        too_many = too_many_deletions(
            len(deletions),
            self.active_links(),
            min_count=settings.MASS_DELETE_MIN_COUNT,
            min_percent=settings.MASS_DELETE_MIN_PERCENT,
        )
        if (too_many or held) and not approved:
            newly = [action.pair.link for action in deletions if not action.pair.link.held_gone]
            for action in deletions:
                action.pair.link.held_gone = action.gone.value
            EventLink.objects.bulk_update(newly, ["held_gone"])
            held = list({link.pk: link for link in [*held, *newly]}.values())
            params = self.flag(outcome, len(held))
            if newly:
                details = {"planned": [link.pk for link in held]}
                self.log.record("held", Reason.HELD_MASS_DELETE, params, details=details)
            return [action for action in actions if action.kind not in DELETIONS]
        outcome.used_approval = approved
        return actions

    def active_links(self) -> int:
        """How many links the mailbox has (not only those this run loaded)."""
        return EventLink.objects.filter(mapping=self.mapping, state=ACTIVE).count()

    def flag(self, outcome: Outcome, held: int) -> dict:
        params = {"count": held, "active": self.active_links()}
        outcome.flag_reason = render_reason_en(Reason.HELD_MASS_DELETE, params)
        return params

    def apply_all(self, actions: list[Action], outcome: Outcome) -> None:
        try:
            self.apply_each(actions, outcome)
        finally:
            self.applier.discard_prepared()

    def apply_each(self, actions: list[Action], outcome: Outcome) -> None:
        """Batch by batch, taking each batch out of `actions`: what a batch read (events, records) is let go
        once it is carried out, so a first sync never holds all of both calendars to its end."""
        while actions:
            batch = actions[:BATCH_SIZE]
            del actions[:BATCH_SIZE]
            if not self.apply_batch(batch, outcome):
                return

    def apply_batch(self, batch: list[Action], outcome: Outcome) -> bool:
        """Carry out one batch; False when the run stops here (its deadline, or a wait longer than it has)."""
        creates = [a for a in batch if a.kind != Kind.CREATE_IN_RAYNET] if self.allowance_spent() else batch
        self.applier.prepare_creates(creates)
        for action in batch:
            if action.kind == Kind.NOTHING:
                continue
            if self.deadline is not None and time.monotonic() >= self.deadline:
                outcome.released, outcome.stopped_at_deadline = False, True
                self.log.record("stopped", Reason.DEADLINE_REACHED, {"seconds": settings.SYNC_RUN_DEADLINE})
                return False
            if action.kind == Kind.CREATE_IN_RAYNET and self.allowance_spent():
                outcome.deferred += 1  # made when the next whole-window read finds it, on a day with budget
                continue
            try:
                self.applier.run(action)
                self.applier.flush_if_full()
            except ProviderError as error:
                if error.permanent or error.kind == ErrorKind.BUDGET_SPENT:
                    raise
                self.log_failure(action, error)
                if self.must_wait(error):
                    outcome.released = False
                    outcome.not_before = timezone.now() + timedelta(seconds=error.retry_after)
                    return False
                # Past the cursors, a change comes back only when they stay put; a failed create needs no
                # such help: its saved intent link is finished by the next run. A rejected change would
                # fail again: it waits for the next edit or the next full read, not for every run.
                if error.retryable and action.kind not in CREATES:
                    outcome.released = False
            except Exception as error:  # one item's data, not the run's: it is logged and skipped
                logger.warning("could not apply %s: %r", action.kind, error, exc_info=True)
                self.log_unreadable(pair_unreadable(action.pair, error), link=action.pair.link)
        return True

    def must_wait(self, error: ProviderError) -> bool:
        """A Retry-After longer than the run has left: the mapping waits, the run never sleeps through it."""
        if not error.retry_after:
            return False
        left = (self.deadline - time.monotonic()) if self.deadline is not None else float("inf")
        return error.retry_after > left

    # --- a dry run -----------------------------------------------------------------------------------
    def preview(self) -> MappingPlan:
        """What a full run would do now, read from both sides; writes nothing (see service.mapping_dry_run)."""
        observation = self.observer().observe(full=True, raynet_changes=None, id_scan=None)
        result = MappingPlan(mapping=self.mapping)
        actions = []
        for pair in observation.pairs:
            try:
                actions.append(plan(pair, self.policy, observation.facts))
            except Exception as error:
                result.actions.append(planned(pair_unreadable(pair, error)))
        deletions = sum(1 for action in actions if action.kind in DELETIONS)
        active = self.active_links()
        limits = {"min_count": settings.MASS_DELETE_MIN_COUNT, "min_percent": settings.MASS_DELETE_MIN_PERCENT}
        if too_many_deletions(deletions, active, **limits) and not self.mapping.mass_delete_approved:
            result.held_deletions = deletions
        for item in observation.unreadable:
            result.actions.append(planned(item))
        for action in actions:
            line = self.preview_line(action)
            if line is not None:
                result.actions.append(line)
            invited = self.invitations_of(action)
            if invited:
                result.invitations.append((action.title, action.starts_at, invited))
        return result

    def preview_line(self, action: Action) -> PlannedAction | None:
        verb = PREVIEW_VERBS.get(action.kind)
        if verb is None or action.direction not in ("to_outlook", "to_raynet"):
            return None
        if action.kind == Kind.DELETE_IN_RAYNET:
            verb = {Reason.CANCELLED_OTHER_SIDE: "cancel", Reason.DELETION_IGNORED: "ignore"}.get(action.reason, verb)
        reason, params = action.reason, dict(action.params)
        if reason is None:
            reason = {
                Kind.CREATE_IN_OUTLOOK: Reason.CREATED_IN_OUTLOOK,
                Kind.CREATE_IN_RAYNET: Reason.CREATED_IN_RAYNET,
                Kind.DELETE_IN_OUTLOOK: Reason.DELETED_OTHER_SIDE,
            }[action.kind]
            params.setdefault("title", action.title)
        return PlannedAction(action.direction, verb, action.title, action.starts_at, reason.value, params)

    def invitations_of(self, action: Action) -> list[str]:
        """Who Outlook would invite: every attendee of an event we create, the new ones of one we update."""
        if action.kind == Kind.CREATE_IN_OUTLOOK:
            return self.applier.attendee_emails_for(action.pair.activity)
        if action.kind == Kind.UPDATE_OUTLOOK and action.pair.link is not None:
            wanted = set(self.applier.attendee_emails_for(action.pair.activity))
            return sorted(wanted - set(action.pair.link.outlook_attendees))
        return []

    # --- the log --------------------------------------------------------------------------------------
    def log_unreadable(self, item: UnreadableItem, *, link: EventLink | None = None) -> None:
        params = {"side": item.side, "item_id": item.item_id, "title": item.title, "problem": item.problem}
        raynet = None
        if item.side == "raynet" and item.item_id.isdigit():
            raynet = (link.raynet_type if link else "", int(item.item_id))
        outlook_id = item.item_id if item.side == "outlook" else ""
        self.log.record("skipped", Reason.UNREADABLE, params, link=link, raynet=raynet, outlook_id=outlook_id)

    def log_failure(self, action: Action, error: ProviderError) -> None:
        pair = action.pair
        reason = Reason.DELETION_NOT_DONE if action.kind in DELETIONS else Reason.NOT_SYNCED
        self.log.record(
            "error",
            reason,
            {"message": error.message},
            link=pair.link,
            outlook_id=(pair.event or {}).get("id", "") if pair.link is None else "",
            raynet=(pair.activity["_entity"], pair.activity["id"]) if pair.link is None and pair.activity else None,
            details={"kind": error.kind.value, "side": error.side},
        )


PREVIEW_VERBS = {
    Kind.CREATE_IN_OUTLOOK: "create",
    Kind.CREATE_IN_RAYNET: "create",
    Kind.UPDATE_OUTLOOK: "update",
    Kind.UPDATE_RAYNET: "update",
    Kind.DELETE_IN_OUTLOOK: "delete",
    Kind.DELETE_IN_RAYNET: "delete",
    Kind.RESTORE_IN_OUTLOOK: "restore",
    Kind.RESTORE_IN_RAYNET: "restore",
    Kind.SKIP: "skip",
    Kind.LATER: "later",
}


def pair_unreadable(pair: Pair, error: Exception) -> UnreadableItem:
    if pair.event is not None or (pair.link is not None and pair.activity is None):
        return unreadable("outlook", pair.event or {"id": pair.link.outlook_event_id}, error, title_key="subject")
    return unreadable("raynet", pair.activity or {"id": pair.link.raynet_id if pair.link else None}, error)


def planned(item: UnreadableItem) -> PlannedAction:
    params = {"side": item.side, "item_id": item.item_id, "title": item.title, "problem": item.problem}
    direction = "to_raynet" if item.side == "outlook" else "to_outlook"
    return PlannedAction(direction, "skip", item.title, None, Reason.UNREADABLE.value, params)
