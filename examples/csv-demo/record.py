"""Re-create ``session.jsonl``: a SCRIPTED session of the CSV workload, not a model's recording.

The "model" here is a list of replies written by hand (``REPLIES`` below), fed through oi's
real agent loop (``Session``), which runs every block in a real sandbox and records the
session exactly as ``oi run`` would. ``make demo`` replays the record with ``oi replay``: no
model and no GPU needed, and the replay checks that every block still does the same.

Run from the repository root after changing a block:  .venv/bin/python examples/csv-demo/record.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from orchestrator.events import BlockOutput, BlockResult, SessionEnded  # noqa: E402
from orchestrator.loading import load  # noqa: E402
from orchestrator.wiring import open_session  # noqa: E402
from tests.fakes import ScriptedModel  # noqa: E402  (the same scripted model the tests use)

HERE = Path(__file__).resolve().parent
RECORD = HERE / "session.jsonl"
WORKDIR = Path("/tmp/oi-csv-demo")  # where the recording ran (it appears in the record)
SESSION_ID = "csv-demo-scripted"
NOTE = (
    "This session is scripted: its 'model' replies were written by hand in "
    "examples/csv-demo/record.py and run through oi's real agent loop and sandboxes. "
    "It is not a recording of a language model."
)
TASK = (
    "Make a sample sales export (with the broken rows real exports have), clean it in chunks "
    "with pandas, aggregate the revenue by month and plot it to monthly_revenue.png."
)

GENERATE = r"""
import csv
import datetime
import math
import os
import random

# Sample data: 200,000 orders of 2025, with the mess real exports have. Only random() is
# used, whose sequence Python guarantees for a seed, so every run writes the same file.
rng = random.Random(2025)
start = datetime.date(2025, 1, 1)
regions = ["north", "south", "east", "west"]
with open("sales.csv", "w", newline="") as fh:
    out = csv.writer(fh)
    out.writerow(["order_id", "date", "region", "revenue"])
    for order in range(1, 200_001):
        day = int(rng.random() * 365)
        season = 1 + 0.35 * math.sin(2 * math.pi * day / 365)
        revenue = f"{(5 + rng.random() ** 2 * 400) * season:.2f}"
        date = (start + datetime.timedelta(days=day)).isoformat()
        region = regions[int(rng.random() * 4)]
        mess = rng.random()
        if mess < 0.010:
            date = "n/a"
        elif mess < 0.020:
            revenue = ""
        elif mess < 0.030:
            revenue = "-" + revenue  # refunds
        elif mess < 0.035:
            revenue = revenue.replace(".", ",")  # a decimal comma
        out.writerow([order, date, region, revenue])
print(f"wrote sales.csv: 200000 orders, {os.path.getsize('sales.csv')} bytes")
""".strip()

LOOK = r"""
head -n 4 sales.csv
echo "rows (with header): $(wc -l < sales.csv)"
echo "rows with a missing date: $(grep -c ',n/a,' sales.csv)"
""".strip()

CLEAN = r"""
import pandas as pd

# Read 50,000 rows at a time, so a file of any size fits in the sandbox's memory.
dropped = {"bad date": 0, "bad revenue": 0, "refund (negative)": 0}
kept = 0
first = True
for chunk in pd.read_csv("sales.csv", chunksize=50_000, dtype=str):
    dates = pd.to_datetime(chunk["date"], format="%Y-%m-%d", errors="coerce")
    revenue = pd.to_numeric(chunk["revenue"], errors="coerce")
    bad_date = dates.isna()
    bad_revenue = ~bad_date & revenue.isna()
    refund = ~bad_date & ~bad_revenue & (revenue < 0)
    good = ~(bad_date | bad_revenue | refund)
    dropped["bad date"] += int(bad_date.sum())
    dropped["bad revenue"] += int(bad_revenue.sum())
    dropped["refund (negative)"] += int(refund.sum())
    clean = chunk[good].assign(date=dates[good].dt.strftime("%Y-%m-%d"), revenue=revenue[good])
    clean.to_csv("sales_clean.csv", mode="w" if first else "a", header=first, index=False)
    first = False
    kept += int(good.sum())
print(f"kept {kept} rows in sales_clean.csv")
for reason, count in dropped.items():
    print(f"dropped {count:5d} rows: {reason}")
""".strip()

AGGREGATE = r"""
import matplotlib.pyplot as plt
import pandas as pd

monthly = None
for chunk in pd.read_csv("sales_clean.csv", chunksize=50_000, parse_dates=["date"]):
    part = chunk.groupby(chunk["date"].dt.to_period("M"))["revenue"].sum()
    monthly = part if monthly is None else monthly.add(part, fill_value=0)
monthly = monthly.sort_index()
monthly.to_csv("monthly_revenue.csv", header=["revenue"], index_label="month")

ax = monthly.plot(kind="line", marker="o", title="Monthly revenue, 2025 (cleaned)")
ax.set_xlabel("month")
ax.set_ylabel("revenue")
plt.tight_layout()
plt.savefig("monthly_revenue.png", dpi=100)
for month, value in monthly.items():
    print(f"{month}  {value:13,.2f}")
print(f"total    {monthly.sum():13,.2f}")
""".strip()

VERIFY = r"""
ls -1
printf 'monthly_revenue.png begins with:'
head -c 8 monthly_revenue.png | od -An -c
""".strip()


def fenced(language: str, intro: str, code: str) -> str:
    return f"{intro}\n\n```{language}\n{code}\n```\n"


REPLIES = [
    fenced("python", "First I'll make a sample export to work on.", GENERATE),
    fenced("bash", "Let me look at it.", LOOK),
    fenced("python", "Now I'll clean it in chunks and keep only valid orders.", CLEAN),
    fenced("python", "Next, revenue by month and a line chart.", AGGREGATE),
    fenced("bash", "Finally, a check of what is in the folder.", VERIFY),
    "Done. sales_clean.csv holds the valid orders, monthly_revenue.csv the revenue per month, "
    "and monthly_revenue.png the chart.",
]


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(mode=0o755)
    loaded = load(
        {
            "workdir": WORKDIR,
            "auto_run": True,
            "tool_mode": "markdown",
            "model": "scripted replies (examples/csv-demo/record.py), not a model",
            "api_base": ScriptedModel.api_base,
            "pool": False,
            "network": "none",
        }
    )
    RECORD.unlink(missing_ok=True)
    status = "?"
    with open_session(
        loaded,
        session_id=SESSION_ID,
        record_path=RECORD,
        extra={"note": NOTE},
        model=ScriptedModel(*REPLIES),
    ) as opened:
        for event in opened.session.send(TASK):
            if isinstance(event, BlockOutput):
                sys.stdout.write(event.text)
            elif isinstance(event, BlockResult):
                print(f"--- block {event.index}: exit {event.exit_code}")
            elif isinstance(event, SessionEnded):
                status = event.status
    print(f"recorded {RECORD.relative_to(REPO)} ({status})")
    return 0 if status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
