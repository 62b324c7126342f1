"""Summarise ``scripts/probes/tumour_seed_probe.py`` outputs: one markdown row per condition with
the validation Dice per seed, its mean ± sample SD, and per label (1 edema, 2 core, 3 rim).

    python scripts/probes/seed_probe_table.py results/reference/brain_mri_fm/seed_probe
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(folder: str) -> None:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(Path(folder).glob("*_seed*.json")):
        name, seed = path.stem.rsplit("_seed", 1)
        runs.setdefault(name, {})[int(seed)] = json.loads(path.read_text())
    print("| condition | seeds | val Dice per seed | mean ± SD | edema / core / rim (mean) |"
          " first step with all 3 labels > 0.1 |")
    print("|---|---|---|---|---|---|")
    for name, by_seed in runs.items():
        seeds = sorted(by_seed)
        dice = [by_seed[s]["val_dice"] for s in seeds]
        labels = np.mean([by_seed[s]["val_dice_labels"] for s in seeds], axis=0)
        alive = []
        for s in seeds:
            steps = [c["step"] for c in by_seed[s]["curves"] if min(c["val_dice"]) > 0.1]
            alive.append(str(steps[0]) if steps else "never")
        sd = float(np.std(dice, ddof=1)) if len(dice) > 1 else float("nan")
        print(f"| {name} | {', '.join(map(str, seeds))} | "
              f"{', '.join(f'{d:.3f}' for d in dice)} | {np.mean(dice):.3f} ± {sd:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in labels)} | {', '.join(alive)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/reference/brain_mri_fm/seed_probe")
