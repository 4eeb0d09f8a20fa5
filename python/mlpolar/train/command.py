"""``mlpolar train CONFIG``: train (or resume) a model from a YAML config (docs/training.md)."""
from __future__ import annotations

import argparse
import json


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("config", help="training config (YAML); see docs/training.md")
    ap.add_argument("--epochs", type=int, help="override training.epochs (a resumed run "
                    "continues up to this many epochs in total)")
    ap.add_argument("--stop-after", type=int, help="run at most this many epochs now (a "
                    "time-limited job); run the command again to resume")
    ap.add_argument("--no-plots", action="store_true", help="skip the final parity plots")


def command(a: argparse.Namespace) -> int:
    from .trainer import Trainer
    t = Trainer(a.config, epochs=a.epochs)
    start = t.epoch
    print(f"run {t.run_dir}: {len(t.data['train'])} train, {len(t.data['val'])} val, "
          f"{len(t.data['test'])} test, {len(t.data['test_file'])} separate test configurations; "
          f"{'resuming after epoch ' + str(start) if start else 'new run'}", flush=True)

    def report(row):
        print(f"epoch {row['epoch']:4d}  lr {row['lr']:.3g}  train {row['train_loss']:.5g}  "
              f"val {row['val_loss']:.5g}  E {row['val_energy_mae_kcal']:.3g} kcal/mol  "
              f"F_QM {row['val_qm_force_mae_kcal_A']:.3g}  F_MM "
              f"{row['val_mm_force_mae_kcal_A']:.3g} kcal/mol/A  E_int "
              f"{row['val_interaction_mae_kcal']:.3g} kcal/mol", flush=True)

    t.train(stop_after=a.stop_after, on_epoch=report)
    if t.epoch < int(t.cfg["training"]["epochs"]):
        print(f"stopped after epoch {t.epoch}; run again to resume")
        return 0
    m = t.finish(plots=False if a.no_plots else None)
    print(json.dumps(m, indent=1))
    return 0
