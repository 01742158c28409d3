"""The year-transfer tables of docs/figures.md from a run's report.json (its
`year_transfer` section, also shown in report.html): each labeller's held-out figure in
its training year beside its maps of every year against their reference.

    python3 scripts/bench/transfer_table.py runs/flanders-transfer/report.json
"""

import json
import sys


def pair(v) -> str:
    return f"{v['overall_accuracy']:.3f} / {v['macro_f1']:.3f}" if v else "–"


def main() -> None:
    rows = json.load(open(sys.argv[1]))["year_transfer"]
    years = sorted({m["year"] for r in rows for m in r["maps"]})
    print("| labeller | trained on | held out: OA / macro F1 | " + " | ".join(f"{y}: OA / macro F1" for y in years) + " |")
    print("|---|---|---|" + "---|" * len(years))
    for r in rows:
        maps = {m["year"]: m for m in r["maps"]}
        cells = [pair(r["held_out"])] + [pair(maps.get(y)) for y in years]
        print(f"| {r['stage']} | {', '.join(map(str, r['training_years']))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
