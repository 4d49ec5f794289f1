#!/usr/bin/env python3
"""The two ratios of `make bench` side by side, from the JSON the two benchmarks wrote.

.venv/bin/python hack/bench_summary.py TRAINER_JSON OPERATOR_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(trainer_path: str, operator_path: str) -> int:
    t = json.loads(Path(trainer_path).read_text())
    o = json.loads(Path(operator_path).read_text())
    print()
    print(
        f"trainer: {t['speedup_tokens_per_second']:.2f}x the padded HF Trainer + PEFT baseline's tokens/s "
        f"(best of {t['repeats']} each; pairs {t['speedup_each_pair']}); packing's ideal {t['packing_ideal_speedup']:.2f}x "
        f"({t['share_of_ideal']:.0%} of it); load average {t['load_average']}"
    )
    print(
        f"operator: {o['burst']['n']} FineTuneJobs until every Job in {o['burst_to_floor']:.2f}x the full floor "
        f"({o['burst']['all_jobs_s']} s vs {o['floor']['requests']} requests of a plain client in {o['floor']['seconds']} s; "
        f"best of {len(o['rounds'])} each; rounds {o['burst_to_floor_each_round']}); "
        f"{o['burst']['duplicates']} duplicates, {o['burst']['create_errors'] + o['burst']['reconcile_errors']:.0f} errors; "
        f"apply -> Job p99 {o['latency_ms']['p99']} ms; RSS {o['rss_mib']} / {o['rss_after_resync_mib']} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
