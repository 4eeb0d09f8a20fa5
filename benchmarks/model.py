"""Forward + backward (energy and forces on ML and MM atoms) per step of MLPolar, both variants, and of
mace-torch's PolarMACE with random weights at a comparable size.

    OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/model.py [--device cpu|cuda] [--repeats 5] [--compile] [--out DIR]

ML regions: the n ∈ {20, 50, 200} atoms of TIP3P water (data/labels/pxylene_water.h5, tiled) nearest its
centre; MM: 0 or 25,000 further atoms of the same tiled water box (open boundaries, 1.2 nm embedding
cutoff). PolarMACE has no MM embedding: it runs the ML region alone (Å units, its own graph).
Writes <out>/model_<device>.csv and prints a table.

"Equal size": both MLPolar variants share every hyperparameter (--channels wide, 2 message-passing
layers, 0.5 nm cutoff, 8 Bessel functions, K = 2 polarisation iterations, 8 contraction channels,
float32); they differ only in `variant`. PolarMACE: the same width in 0e and 1o channels, 2
interactions, 5 Å cutoff, 8 Bessel functions, 2 recursion (polarisation) steps, charges and dipoles.
CPU figures are the process's CPU time (one thread), best of --repeats after a warm-up.

Weights are frozen (requires_grad False), as in MD and evaluation. The fast variant then runs its
fused operator (csrc/fast_model.cpp, docs/model.md); "fast-composed" is the same model on the
composed path that trainable weights take (autograd through every op), reported next to it.
"""
import argparse
import csv
import os
import time
from pathlib import Path

import h5py
import torch

from mlpolar.model import MLPolar, MLPolarConfig, energy_and_forces

ROOT = Path(__file__).resolve().parents[1]


def water_box(copies=(3, 3, 3)):
    with h5py.File(ROOT / "data" / "labels" / "pxylene_water.h5", "r") as f:
        g = f["configs/00000000"]
        pos = torch.tensor(g["mm_positions"][:], dtype=torch.float64)
        q = torch.tensor(g["mm_charges"][:], dtype=torch.float64)
        box = torch.tensor(g["box"][:], dtype=torch.float64)
    Z = torch.tensor([8, 1, 1] * (len(q) // 3))
    tiles = [pos + i * box[0] + j * box[1] + k * box[2]
             for i in range(copies[0]) for j in range(copies[1]) for k in range(copies[2])]
    pos = torch.cat(tiles)
    n = len(tiles)
    return pos, q.repeat(n), Z.repeat(n)


def system(n_ml, n_mm, dtype, device):
    pos, q, Z = water_box()
    centre = pos.mean(0)
    order = torch.argsort((pos - centre).norm(dim=1))
    ml, mm = order[:n_ml], order[n_ml:n_ml + n_mm]
    species = Z[ml]
    electrons = int(species.sum())
    mult = 1 if electrons % 2 == 0 else 2
    args = dict(species=species.to(device), positions=pos[ml].to(dtype=dtype, device=device),
                total_charge=torch.zeros(1, dtype=dtype, device=device),
                multiplicity=torch.tensor([mult], device=device))
    if n_mm:
        args["mm_positions"] = pos[mm].to(dtype=dtype, device=device)
        args["mm_charges"] = q[mm].to(dtype=dtype, device=device)
    return args


def one_call(fn, device):
    """Seconds of one call: the process's CPU time on CPU (robust to other jobs on a shared machine;
    run with one thread), wall clock between synchronisations on CUDA."""
    if device == "cuda":
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t
    t = time.process_time()
    fn()
    return time.process_time() - t


def timed_together(fns, repeats, device):
    """Best time of each of `fns` (name -> callable) over `repeats` rounds after a warm-up call. The
    models take turns within each round, so load changes on a shared machine hit all of them alike."""
    for fn in fns.values():
        fn()  # warm-up (and TorchScript/cuDNN first-call work)
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], one_call(fn, device))
    return best


def polar_mace(dtype, device, channels):
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from e3nn import o3
    from mace.modules import interaction_classes
    from mace.modules.extensions import PolarMACE
    torch.manual_seed(0)
    model = PolarMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=1,
        interaction_cls=interaction_classes["RealAgnosticResidualNonLinearInteractionBlock"],
        interaction_cls_first=interaction_classes["RealAgnosticResidualNonLinearInteractionBlock"],
        num_interactions=2, num_elements=2, hidden_irreps=o3.Irreps(f"{channels}x0e + {channels}x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=torch.zeros(2, dtype=dtype), avg_num_neighbors=8.0,
        atomic_numbers=[1, 8], correlation=1, gate=torch.nn.functional.silu, radial_MLP=[32, 32],
        radial_type="bessel", kspace_cutoff_factor=1.0, atomic_multipoles_max_l=1,
        atomic_multipoles_smearing_width=1.0, field_feature_max_l=1, field_feature_widths=[1.0],
        field_feature_norms=[1.0, 1.0], num_recursion_steps=2, field_si=False,
        include_electrostatic_self_interaction=False, add_local_electron_energy=True,
        field_dependence_type="AgnosticEmbeddedOneBodyVariableUpdate",
        final_field_readout_type="OneBodyMLPFieldReadout", return_electrostatic_potentials=False,
        heads=["Default"], field_norm_factor=1.0,
        fixedpoint_update_config={"type": "AgnosticEmbeddedOneBodyVariableUpdate",
                                  "potential_embedding_cls": "AgnosticChargeBiasedLinearPotentialEmbedding",
                                  "nonlinearity_cls": "MLPNonLinearity"},
        field_readout_config={"type": "OneBodyMLPFieldReadout"},
    ).to(device=device, dtype=dtype).requires_grad_(False)
    # mace-torch 0.3.16 passes force_pbc_evaluator and pbc keywords that graph_longrange 0.4.4's
    # GTOElectrostaticFeatures no longer takes (pbc is already in its geometry cache; its
    # external-source wrapper drops the retired option the same way): drop them for this instance
    desc = model.electric_potential_descriptor
    base_geometry, base_dynamic = desc.precompute_geometry, desc.forward_dynamic

    def precompute_geometry(**kwargs):
        kwargs.pop("force_pbc_evaluator", None)
        return base_geometry(**kwargs)

    def forward_dynamic(**kwargs):
        kwargs.pop("pbc", None)
        # 0.3.16 hands the sources as [nodes, 1, m] (one smearing width); 0.4.4's Fourier assembly
        # multiplies them as a flat [nodes, n_sigma * m] matrix
        src = kwargs["source_feats"]
        kwargs["source_feats"] = src.reshape(src.shape[0], -1)
        return base_dynamic(**kwargs)
    desc.precompute_geometry, desc.forward_dynamic = precompute_geometry, forward_dynamic
    # the same for the final Coulomb energy: no force_pbc_evaluator keyword, flat [nodes, m] sources
    energy = model.coulomb_energy
    base_energy = energy.forward

    def energy_forward(**kwargs):
        kwargs.pop("force_pbc_evaluator", None)
        src = kwargs["source_feats"]
        kwargs["source_feats"] = src.reshape(src.shape[0], -1)
        return base_energy(**kwargs)
    energy.forward = energy_forward
    return model


def polar_mace_batch(model, args, dtype, device):
    from ase import Atoms
    from mace import data
    from mace.tools import torch_geometric, utils
    pos_A = args["positions"].detach().cpu().double().numpy() * 10.0
    atoms = Atoms(numbers=args["species"].cpu().numpy(), positions=pos_A - pos_A.mean(0) + 15.0,
                  cell=[30.0, 30.0, 30.0], pbc=True)   # its open-boundary path allocates tens of GB
    atoms.info["charge"] = 0.0
    atoms.info["spin"] = float(int(args["multiplicity"][0]) - 1) / 2.0
    atoms.info["external_field"] = [0.0, 0.0, 0.0]
    keyspec = data.KeySpecification(info_keys={"total_spin": "spin", "total_charge": "charge",
                                               "external_field": "external_field"}, arrays_keys={})
    config = data.config_from_atoms(atoms, key_specification=keyspec, head_name="Default")
    z_table = utils.AtomicNumberTable([1, 8])
    loader = torch_geometric.dataloader.DataLoader(
        dataset=[data.AtomicData.from_config(config, z_table=z_table, cutoff=float(model.r_max), heads=model.heads)],
        batch_size=1, shuffle=False, drop_last=False)
    batch = next(iter(loader)).to(device).to_dict()
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dtype.is_floating_point:
            batch[key] = value.to(dtype)
    return batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU time is per process)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 50, 200])
    parser.add_argument("--mm", type=int, nargs="+", default=[0, 25000])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--no-polarmace", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time both variants under torch.compile (inductor), next to eager")
    parser.add_argument("--capture", action="store_true",
                        help="with --compile: let dynamo trace data-dependent shapes (the pair lists' nonzero), "
                             "so the fast variant without MM or box is one graph (plus the eager checks)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = parser.parse_args()
    dtype, device = getattr(torch, a.dtype), a.device
    torch.set_num_threads(a.threads)
    rows = []
    # frozen weights, as in MD (MLPolarForce) and evaluation: the fast variant then runs as one fused
    # operator (csrc/fast_model.cpp); "fast-composed" is the same model on its training path (autograd
    # through every op), the path a model with trainable weights takes
    models = {v: MLPolar(MLPolarConfig(elements=[1, 8], variant=v, channels=a.channels)).to(dtype=dtype, device=device)
              .requires_grad_(False) for v in ("equivariant", "fast")}
    composed = MLPolar(MLPolarConfig(elements=[1, 8], variant="fast", channels=a.channels)).to(dtype=dtype, device=device)
    composed.load_state_dict(models["fast"].state_dict())
    composed.fused_inference = False
    models["fast-composed"] = composed.requires_grad_(False)
    if a.compile and a.capture:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
    if a.compile:
        # inductor, dynamic shapes: one compilation per variant and per MM/no-MM path, reused across sizes
        # (the warm-up call of each size pays any recompilation; it is not timed)
        # (the fused operator is eager only: under torch.compile the fast variant takes its composed path)
        models.update({f"{v}-compiled": torch.compile(models[v], dynamic=True) for v in ("equivariant", "fast")})
    for n in a.sizes:
        for m in a.mm:
            args = system(n, m, dtype, device)
            fns = {f"mlpolar-{name}": (lambda model=model: energy_and_forces(model, **args))
                   for name, model in models.items()}
            for name, t in timed_together(fns, a.repeats, device).items():
                rows.append({"model": name, "n_ml": n, "n_mm": m, "device": device, "dtype": a.dtype,
                             "ms_per_step": round(1e3 * t, 3)})
                print(rows[-1], flush=True)
    # PolarMACE after the MLPolar rounds (one package import and graph build, then the same timing)
    pm = None
    if not a.no_polarmace:
        try:
            pm = polar_mace(dtype, device, a.channels)
        except Exception as err:  # report, do not hide: the table says PolarMACE was not run
            print(f"PolarMACE could not be built: {type(err).__name__}: {err}")
    for n in a.sizes if pm is not None else []:
        args = system(n, 0, dtype, device)
        batch = polar_mace_batch(pm, args, dtype, device)

        def step():
            b = dict(batch)
            b["positions"] = batch["positions"].detach().requires_grad_(True)
            return pm(b, training=False, compute_force=True)["forces"]
        try:
            t = timed_together({"PolarMACE": step}, a.repeats, device)["PolarMACE"]
        except Exception as err:  # report, do not hide: the table then has no PolarMACE row
            print(f"PolarMACE failed at n={n}: {type(err).__name__}: {err}")
            continue
        rows.append({"model": "PolarMACE", "n_ml": n, "n_mm": 0, "device": device, "dtype": a.dtype,
                     "ms_per_step": round(1e3 * t, 3)})
        print(rows[-1], flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"model_{device}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{'model':24s} {'n_ml':>5s} {'n_mm':>6s} {'ms/step':>10s}")
    for r in rows:
        print(f"{r['model']:24s} {r['n_ml']:5d} {r['n_mm']:6d} {r['ms_per_step']:10.2f}")


if __name__ == "__main__":
    main()
