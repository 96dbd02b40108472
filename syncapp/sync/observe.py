"""Reading: both sides of one mailbox into pairs, and the facts the decisions need. Writes nothing.

Outlook's delta reports changes and removals; Raynet's changes come from the organization's change
listing (service.py), or from a whole-window read. What neither reports is looked up here: a removal
in the delta may be a deletion or an event that left the window (get_event tells), a deleted
occurrence has no tombstone (the series is compared with its instances), and a Raynet deletion shows
only as an id missing from the organization's id listing (deletions.py), confirmed by a GET.
An item that cannot be read becomes an UnreadableItem for the log; it never stops the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Q

from syncapp.models import EffectivePolicy, EventLink, Organization, UserMapping
from syncapp.providers.base import ErrorKind, ProviderError, UnreadableItem, unreadable
from syncapp.providers.outlook import DeltaResult, OutlookClient
from syncapp.providers.raynet import RaynetClient
from syncapp.sync import fields as f
from syncapp.sync.deletions import IdScan
from syncapp.sync.plan import ACTIVE, DELETED, Facts, Pair, raynet_hash
from syncapp.sync.reasons import RAYNET_GONE, Gone

logger = logging.getLogger("syncapp.sync")


class SideFailed(Exception):
    """Reading one side failed as a whole: the mapping's health says why, cursors stay put."""

    def __init__(self, side: str, error: ProviderError) -> None:
        super().__init__(f"{'Outlook' if side == 'outlook' else 'Raynet'}: {error.message}")
        self.side = side
        self.error = error


@dataclass
class Observation:
    pairs: list[Pair]
    delta: DeltaResult
    facts: Facts
    unreadable: list[UnreadableItem] = field(default_factory=list)
    # Occurrence links whose Outlook id changed (a moved series), and held links whose gone side is back:
    # apply records them first.
    relinked: list[EventLink] = field(default_factory=list)


class RaynetDirectory:
    """The organization's people: Raynet users by e-mail and the mapped mailboxes' addresses.

    Read once per organization cycle (not once per mailbox: that made a cycle O(mailboxes²)), and
    the Raynet users only when needed.
    """

    def __init__(self, raynet: RaynetClient, organization: Organization) -> None:
        self.raynet = raynet
        self.organization = organization
        self._by_email: dict[str, int] | None = None
        self._mapped: frozenset[str] | None = None

    @property
    def mapped_organizers(self) -> frozenset[str]:
        """E-mails of every enabled mapping: such an organizer's meetings sync from their own mailbox."""
        if self._mapped is None:
            addresses = self.organization.mappings.filter(enabled=True).values_list("outlook_upn", "raynet_email")
            self._mapped = frozenset(email.lower() for pair in addresses for email in pair)
        return self._mapped

    def user_person(self, email: str) -> int | None:
        if self._by_email is None:
            self._by_email = {}
            for user in self.raynet.list_users():
                for address in (user.username, user.email):
                    if address:
                        self._by_email[address.strip().lower()] = user.person_id
        return self._by_email.get(email.strip().lower()) if email else None


@dataclass
class Observer:
    mapping: UserMapping
    policy: EffectivePolicy
    raynet: RaynetClient
    outlook: OutlookClient
    window: tuple[datetime, datetime]
    links: list[EventLink]
    directory: RaynetDirectory
    approved: bool = False  # an admin approved the deletions the mass-delete guard holds back

    def __post_init__(self) -> None:
        self.index_links()
        self.bad: list[UnreadableItem] = []
        self.relinked: list[EventLink] = []

    def index_links(self) -> None:
        self.links_by_outlook = {link.outlook_event_id: link for link in self.links if link.outlook_event_id}
        self.links_by_raynet = {(link.raynet_type, link.raynet_id): link for link in self.links if link.raynet_id}

    def observe(self, *, full: bool, raynet_changes: list | None, id_scan: IdScan | None) -> Observation:
        delta = self.read_outlook(full=full)
        self.bad.extend(delta.unreadable)
        activities = self.readable(raynet_changes if raynet_changes is not None else self.read_raynet_window())
        self.load_links(delta, activities, whole=delta.full or raynet_changes is None, id_scan=id_scan)
        pairs = self.build_pairs(delta, activities)
        if delta.full:
            self.find_missing_outlook(pairs, seen={*(e["id"] for e in delta.events), *delta.removed_ids})
        listed = {(a["_entity"], a["id"]) for a in activities} if raynet_changes is None else None
        self.find_missing_raynet(pairs, listed=listed, id_scan=id_scan)
        self.check_series(pairs, delta)
        self.recall_held(pairs)
        return Observation(
            pairs=list(pairs.values()),
            delta=delta,
            facts=self.facts(pairs.values()),
            unreadable=self.bad,
            relinked=self.relinked,
        )

    # --- the two sides ------------------------------------------------------------------------------
    def read_outlook(self, *, full: bool) -> DeltaResult:
        start, end = self.window
        fresh = full or self.mapping.graph_delta_window_start != start.date()
        try:
            return self.outlook.delta(
                self.mapping.outlook_user_id,
                delta_link="" if fresh else self.mapping.graph_delta_link,
                start=start,
                end=end,
            )
        except ProviderError as error:
            raise SideFailed("outlook", error) from error

    def read_raynet_window(self) -> list:
        start, end = self.window
        try:
            return [
                activity
                for entity in ("meeting", "event")
                for activity in self.raynet.list_activities(
                    entity, owner_id=self.mapping.raynet_person_id, scheduled_from=start, scheduled_till=end
                )
            ]
        except ProviderError as error:
            raise SideFailed("raynet", error) from error

    def load_links(self, delta: DeltaResult, activities: list[dict], *, whole: bool, id_scan: IdScan | None) -> None:
        """The links this read needs, in one query: every one after a whole-window read, else only those the
        changes touch and those the id listing missed (an idle poll loads none). `self.links` holds the
        ones loaded already (pending creates, held deletions: the same objects, never loaded twice)."""
        if whole:
            query = Q()
        else:
            series = {event["seriesMasterId"] for event in delta.events if event.get("seriesMasterId")}
            touched = [
                Q(outlook_event_id__in=[event["id"] for event in delta.events] + list(delta.removed_ids)),
                Q(series_master_id__in=series),
                Q(raynet_id__in={activity["id"] for activity in activities}),
            ]
            if id_scan is not None:
                touched.append(Q(pk__in=id_scan.missing_links(self.mapping, self.window)))
            query = Q()
            for condition in touched:
                if any(values for _, values in condition.children):
                    query |= condition
            if not query:
                return
        known = [link.pk for link in self.links]
        self.links.extend(EventLink.objects.filter(query, mapping=self.mapping).exclude(pk__in=known))
        self.index_links()

    def readable(self, rows: list) -> list[dict]:
        activities = []
        for row in rows:
            if isinstance(row, UnreadableItem):
                self.bad.append(row)
            else:
                activities.append(row)
        return activities

    # --- pairing ------------------------------------------------------------------------------------
    def build_pairs(self, delta: DeltaResult, activities: list[dict]) -> dict:
        pairs: dict = {}

        def pair_for(link: EventLink | None, key) -> Pair:
            return pairs.setdefault(link.pk if link else key, Pair(link=link))

        for event in delta.events:
            try:
                link = self.links_by_outlook.get(event["id"]) or self.moved_occurrence_link(event, delta)
                pair = pair_for(link, ("outlook", event["id"]))
                if event.get("isCancelled") and link:
                    pair.outlook_gone = Gone.CANCELLED_IN_OUTLOOK
                else:
                    pair.event = event
            except Exception as error:
                self.item_failed("outlook", event, error)
        for event_id in delta.removed_ids:
            link = self.links_by_outlook.get(event_id)
            if link and link.state != DELETED:
                self.confirm_outlook_removal(pair_for(link, None), event_id)
        for activity in activities:
            try:
                key = (activity["_entity"], activity["id"])
                link = self.links_by_raynet.get(key)
                pair = pair_for(link, ("raynet", key))
                pair.activity = self.fresh(activity, link)
            except Exception as error:
                self.item_failed("raynet", activity, error)
        return pairs

    def item_failed(self, side: str, item: dict, error: Exception) -> None:
        if isinstance(error, ProviderError) and (error.permanent or error.kind == ErrorKind.BUDGET_SPENT):
            raise error
        logger.warning("could not read %s item %r: %r", side, (item or {}).get("id"), error)
        self.bad.append(unreadable(side, item, error, title_key="subject" if side == "outlook" else "title"))

    def fresh(self, activity: dict, link: EventLink | None) -> dict | None:
        """The organization's listing was read before this mapping's lock: a version older than the one a
        concurrent run already synced is dropped, one of the same minute is read again (rowInfo.updatedAt
        has minute precision, reference §4)."""
        listed_at = activity.get("rowInfo.updatedAt")
        if link is None or link.raynet_updated_at is None or listed_at is None or listed_at > link.raynet_updated_at:
            return activity
        if raynet_hash(activity) == link.raynet_hash:
            return activity
        if listed_at < link.raynet_updated_at:
            return None  # stale: a newer version is synced already
        return self.raynet.get_activity(activity["_entity"], activity["id"])

    def moved_occurrence_link(self, event: dict, delta: DeltaResult) -> EventLink | None:
        """Moving a whole series gives each occurrence a new id, but its iCalUId (which carries the
        occurrence's date) stays: the copy is kept and updated rather than cancelled and made again."""
        master_id, ical_uid = event.get("seriesMasterId"), event.get("iCalUId")
        if not master_id or not ical_uid:
            return None
        for link in self.links_of_series(master_id):
            old_id = link.outlook_event_id
            if link.ical_uid != ical_uid or old_id == event["id"]:
                continue
            if old_id in delta.removed_ids or (delta.full and all(e["id"] != old_id for e in delta.events)):
                self.links_by_outlook.pop(old_id, None)
                link.outlook_event_id = event["id"]  # recorded by apply before any action (Applier.relink)
                self.relinked.append(link)
                self.links_by_outlook[link.outlook_event_id] = link
                return link
        return None

    def confirm_outlook_removal(self, pair: Pair, event_id: str) -> None:
        """The delta reports deletions and events that left the window alike: ask which it was."""
        event = self.outlook.get_event(self.mapping.outlook_user_id, event_id)
        if event is None:
            pair.outlook_gone = Gone.DELETED_IN_OUTLOOK
        elif event.get("isCancelled"):
            pair.outlook_gone = Gone.CANCELLED_IN_OUTLOOK
        else:
            pair.event = event  # it only left the window (or moved): not a deletion

    def find_missing_outlook(self, pairs: dict, seen: set[str]) -> None:
        """After a full read, a linked event inside the window that did not show up is looked up once."""
        for link in self.active_links_in_window():
            if link.outlook_event_id and link.outlook_event_id not in seen:
                paired = link.pk in pairs
                pair = pairs.setdefault(link.pk, Pair(link=link))
                # Also when the Raynet side is paired (a full Raynet read lists every linked record): a full
                # delta reports no deletions, so this lookup is the only way to notice one. A paired
                # occurrence is left to check_series, which lists its series once.
                if not paired or (pair.event is None and not pair.outlook_gone and not link.series_master_id):
                    self.confirm_outlook_removal(pair, link.outlook_event_id)

    def find_missing_raynet(self, pairs: dict, *, listed: set[tuple[str, int]] | None, id_scan: IdScan | None) -> None:
        """Raynet has no tombstones: a linked record in the window that a listing should have shown but did
        not is fetched; gone (404) = deleted. Out of the window is never a deletion: it is not looked for."""
        for link in self.active_links_in_window():
            key = (link.raynet_type, link.raynet_id)
            if not link.raynet_id or (link.pk in pairs and pairs[link.pk].activity is not None):
                continue
            if listed is not None:
                missing = key not in listed
            else:
                missing = id_scan is not None and id_scan.misses(link)
            if missing:
                pair = pairs.setdefault(link.pk, Pair(link=link))
                activity = self.raynet.get_activity(link.raynet_type, link.raynet_id)
                if activity is None:
                    pair.raynet_gone = Gone.DELETED_IN_RAYNET
                else:
                    pair.activity = activity

    def check_series(self, pairs: dict, delta: DeltaResult) -> None:
        """Graph reports no tombstone for a deleted occurrence: compare a touched series with its instances."""
        series = {e["seriesMasterId"] for e in delta.events if e.get("seriesMasterId")}
        if delta.full:
            series |= {link.series_master_id for link in self.active_links_in_window() if link.series_master_id}
        start, end = self.window
        for master_id in sorted(series):
            try:
                instances = self.outlook.list_instances(self.mapping.outlook_user_id, master_id, start, end)
            except ProviderError as error:
                if error.kind != ErrorKind.NOT_FOUND:
                    raise
                instances = []  # the whole series is gone
            alive = {event.get("id") for event in instances if isinstance(event, dict)}
            for link in self.links_of_series(master_id):
                if link.outlook_event_id not in alive and self.in_window(link):
                    pair = pairs.setdefault(link.pk, Pair(link=link))
                    if pair.event is None and not pair.outlook_gone:
                        pair.outlook_gone = Gone.OCCURRENCE_DELETED

    def recall_held(self, pairs: dict) -> None:
        """A deletion the guard holds was found once and is not looked for again (each poll would): it joins
        the run when the admin approved it, or when its other side changed (a restore may win over it)."""
        for link in self.links:
            if not link.held_gone or link.state != ACTIVE or not (self.approved or link.pk in pairs):
                continue
            pair = pairs.setdefault(link.pk, Pair(link=link))
            gone = Gone(link.held_gone)
            if gone in RAYNET_GONE:
                back = pair.activity is not None and pair.activity.get("status") != "CANCELLED"
            else:
                back = pair.event is not None and not pair.event.get("isCancelled")
            if back:  # not gone after all (an Outlook event restored from Deleted Items): nothing is held
                link.held_gone = ""
                self.relinked.append(link)
            elif gone in RAYNET_GONE:
                pair.raynet_gone = pair.raynet_gone or gone
            else:
                pair.outlook_gone = pair.outlook_gone or gone

    def links_of_series(self, master_id: str) -> list[EventLink]:
        return [
            link
            for link in self.links_by_outlook.values()
            if link.series_master_id == master_id and link.state == ACTIVE
        ]

    def active_links_in_window(self) -> list[EventLink]:
        """The links whose sides are looked for; a held deletion's are known gone (recall_held)."""
        return [link for link in self.links if link.state == ACTIVE and not link.held_gone and self.in_window(link)]

    def in_window(self, link: EventLink) -> bool:
        start, end = self.window
        return link.ends_at is None or (link.ends_at >= start and (link.starts_at or start) <= end)

    # --- facts for the decisions --------------------------------------------------------------------
    def facts(self, pairs) -> Facts:
        """Who else holds a record or an invitation, and who organizes invitations: one query each."""
        new_activities = [p.activity for p in pairs if p.link is None and p.activity is not None]
        invitations = [
            p.event for p in pairs if p.link is None and p.event is not None and not p.event.get("isOrganizer", True)
        ]
        organization = self.mapping.organization_id
        elsewhere = {}
        if new_activities:
            rows = (
                EventLink.objects.filter(organization_id=organization, raynet_id__in={a["id"] for a in new_activities})
                .exclude(mapping=self.mapping)
                .values_list("raynet_type", "raynet_id", "mapping__outlook_upn")
            )
            elsewhere = {(kind, rid): upn for kind, rid, upn in rows}
        invitation_links = {}
        ical_uids = {e.get("iCalUId") for e in invitations if e.get("iCalUId")}
        if ical_uids:
            rows = (
                EventLink.objects.filter(organization_id=organization, ical_uid__in=ical_uids)
                .exclude(state=DELETED)
                .values_list("ical_uid", "raynet_type", "raynet_id")
            )
            invitation_links = {uid: (kind, rid) for uid, kind, rid in rows}
        # Only invitations ask who else is a mapped user (plan.owner_of): a run without any makes no query for it.
        mapped = self.directory.mapped_organizers if invitations else frozenset()
        organizers = {
            email
            for email in (f.outlook_organizer_email(e) for e in invitations if e.get("iCalUId") not in invitation_links)
            if email and email not in mapped
        }
        return Facts(
            window=self.window,
            mailbox_person_id=self.mapping.raynet_person_id,
            mapped_organizers=mapped,
            elsewhere=elsewhere,
            invitation_links=invitation_links,
            organizer_persons={email: self.directory.user_person(email) for email in sorted(organizers)},
            occurrence_horizon=self.policy.occurrence_horizon(),
        )
