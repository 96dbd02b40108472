"""`make bench`: issue 12's figures against the sandboxes and PostgreSQL, printed as one table.

Not part of `make test`: nothing here is named test_*.py, so pytest never collects it. The runner
makes a database of its own (test_<name>_bench[_$TOX_PARALLEL_ENV], on DATABASE_URL's server or the
embedded one, as `make test` does), runs each section in a process of its own (so each peak memory
figure is that section's), prints the table as Markdown and drops the database.

    python -m tests.bench [--only idle,changes,initial,scale,budget,onboarding,latency] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.harness import BENCH_DB_ENV, bench_database_name, setup_django


def main() -> int:
    from tests.bench.scenarios import SECTIONS

    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--json", help="also write the rows and the machine as JSON to this file")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_django()
    if args.section:
        rows = SECTIONS[args.section]()
        Path(args.out).write_text(json.dumps([asdict(row) for row in rows]))
        return 0
    return run_all([name.strip() for name in args.only.split(",") if name.strip()], args.json)


def run_all(sections: list[str], json_path: str | None) -> int:
    from django.db import connection

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    original_name = connection.settings_dict["NAME"]
    connection.settings_dict.setdefault("TEST", {})["NAME"] = bench_database_name(original_name)
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    machine = machine_info()
    rows, failed = [], []
    try:
        for section in sections:
            print(f"running {section} …", file=sys.stderr, flush=True)
            section_started, cpu_before = time.perf_counter(), children_cpu()
            result = run_section(section, name)
            if result is None:
                failed.append(section)
            else:
                rows += result
            took = f"{time.perf_counter() - section_started:.0f} s (CPU {children_cpu() - cpu_before:.0f} s)"
            print(f"  {section}: {took}", file=sys.stderr, flush=True)
    finally:
        connection.creation.destroy_test_db(original_name, verbosity=0)
    machine["duration"] = f"{time.perf_counter() - started:.0f} s (CPU {children_cpu():.0f} s)"
    machine["load"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1-min load average)"
    print(render(rows, machine, failed))
    if json_path:
        Path(json_path).write_text(json.dumps({"machine": machine, "rows": rows, "failed": failed}, indent=2))
    return 1 if failed else 0


def children_cpu() -> float:
    """CPU seconds of the finished section processes (the machine is shared: wall time says less)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_section(section: str, database: str) -> list[dict] | None:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, "-m", "tests.bench", "--section", section, "--out", out.name]
        done = subprocess.run(command, env={**os.environ, BENCH_DB_ENV: database})
        if done.returncode:
            return None
        return json.loads(Path(out.name).read_text())


def machine_info() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        postgres = cursor.fetchone()[0]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "postgresql": postgres,
        "database": "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded server",
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(rows: list[dict], machine: dict, failed: list[str]) -> str:
    lines = ["| section | figure | measured | target | met |", "|---|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        lines.append(f"| {row['section']} | {row['figure']} | {row['value']} | {row['target']} | {met} |")
    for section in failed:
        lines.append(f"| {section} | (the section failed: see its traceback above) | | | **no** |")
    met = sum(1 for row in rows if row["met"])
    targets = sum(1 for row in rows if row["met"] is not None) + len(failed)
    lines.append("")
    lines.append(f"Targets met: {met} of {targets}.")
    lines.append(
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"PostgreSQL {machine['postgresql']} ({machine['database']}); {machine['date']}; "
        f"took {machine['duration']}; load {machine['load']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
