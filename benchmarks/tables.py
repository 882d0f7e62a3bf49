"""The Markdown tables of benchmarks/README.md, printed from the JSON the benchmark scripts saved (so the README
quotes the scripts' numbers, not hand-copied ones).

    python benchmarks/tables.py shapley [--split heldout] [--kind real]
    python benchmarks/tables.py families [--split heldout]      (synthetic games, per family)
    python benchmarks/tables.py ratios [--split tune]           (ours / best peer per cell, real and synthetic)
    python benchmarks/tables.py quality [--file benchmarks/results/quality_heldout_detector.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path("benchmarks/results")
SHORT = {"captum_kernel_shap": "Captum KernelShap", "captum_shapley_sampling": "Captum ShapleyValueSampling",
         "shap_kernel": "SHAP KernelExplainer", "shap_permutation": "SHAP PermutationExplainer",
         "shapiq_kernel_shap": "shapiq KernelSHAP", "shapiq_kadd_shap": "shapiq kADDSHAP",
         "shapiq_svarm": "shapiq SVARM", "shapiq_unbiased_kernel_shap": "shapiq UnbiasedKernelSHAP",
         "shapiq_permutation": "shapiq PermutationSamplingSV", "shapiq_stratified": "shapiq StratifiedSamplingSV",
         "shapiq_owen": "shapiq OwenSamplingSV"}


def _num(x: float, digits: int) -> str:
    """Fixed point, or two significant digits in e-notation where fixed point would print 0 or a huge number."""
    return f"{x:.{digits}f}" if x == 0 or 10 ** -digits <= abs(x) < 1000 else f"{x:.1e}"


def _cell_order(key: str) -> tuple[int, int]:
    m, b = key.split("/")
    return int(m[1:]), int(b[1:])


def _config(peer: dict, which: str) -> str:
    key = peer[which]
    return "" if key == "default" else f" ({key})"


def shapley(split: str, kind: str) -> None:
    data = json.loads((RESULTS / f"shapley_{split}_{kind}.json").read_text())
    print(f"<!-- {RESULTS}/shapley_{split}_{kind}.json: {data['split']}; {data['seeds']} seeds; "
          f"{data['seconds']:.0f} s -->")
    print("| M | budget | **bayes_shapley (ours, default)** | kernel_shap (ours) | order 1 (ours) | permutation (ours) "
          "| continuous_coalition_shapley (ours) | best peer (its configuration) | 2nd-best peer "
          "| SHAP KernelExplainer as shipped | ours ÷ best peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|")
    for key in sorted(data["cells"], key=_cell_order):
        cell = data["cells"][key]
        ours = cell["ours"]

        def fmt(stats: dict | None) -> str:
            return "—" if stats is None else f"{_num(stats['median'], 4)} / {_num(stats['p90'], 3)}"
        ranked = cell["peers_ranked"]
        best, second = ranked[0], ranked[1]
        shap_default = cell["peers"]["shap_kernel"]["configs"].get("l1_reg=num_features(10)")
        ratio = cell["ratio_bayes_over_best_peer"]
        M, B = _cell_order(key)
        print(f"| {M} | {B} | **{fmt(ours['bayes_shapley'])}** | {fmt(ours.get('kernel_shap'))} "
              f"| {fmt(ours.get('kernel_shap_order1'))} | {fmt(ours.get('permutation'))} | {fmt(ours.get('beta'))} "
              f"| {SHORT[best[0]]}{'' if best[1] == 'default' else ' (' + best[1] + ')'}: "
              f"{fmt(cell['peers'][best[0]])} "
              f"| {SHORT[second[0]]}{'' if second[1] == 'default' else ' (' + second[1] + ')'}: {_num(second[2], 4)} "
              f"| {fmt(shap_default)} "
              f"| {'—' if ratio is None else _num(ratio, 3)} {'✓' if ratio is not None and ratio <= 0.5 else '✗'} |")


def families(split: str) -> None:
    data = json.loads((RESULTS / f"shapley_{split}_synthetic.json").read_text())
    fams = list(data["by_family"])
    cells = sorted(data["by_family"][fams[0]], key=_cell_order)
    print("| family | " + " | ".join(f"M {_cell_order(c)[0]} @ {_cell_order(c)[1]}" for c in cells) + " |")
    print("|---|" + "---:|" * len(cells))
    for fam in fams:
        row = []
        for c in cells:
            cell = data["by_family"][fam][c]
            ratio = cell["ratio"]
            row.append(f"{_num(cell['bayes_shapley'], 3)} / {_num(cell['best_peer_median'], 3)} "
                       f"({'—' if ratio is None else _num(ratio, 2)})")
        print(f"| {fam} | " + " | ".join(row) + " |")


def _ratio(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.3g}"


def ratios(split: str) -> None:
    """bayes_shapley / best peer per cell, real and synthetic games of a split, one row each."""
    rows, cells = [], None
    for kind in ("real", "synthetic"):
        data = json.loads((RESULTS / f"shapley_{split}_{kind}.json").read_text())
        cells = sorted(data["cells"], key=_cell_order)
        rows.append(f"| {split} {kind} | " + " | ".join(
            _ratio(data["cells"][c]["ratio_bayes_over_best_peer"]) for c in cells) + " |")
    print("| | " + " | ".join(f"M {_cell_order(c)[0]} @ {_cell_order(c)[1]}" for c in cells) + " |")
    print("|---|" + "---:|" * len(cells))
    print("\n".join(rows))


def quality(path: str) -> None:
    data = json.loads(Path(path).read_text())
    print(f"<!-- {path}: {data['split']}; budgets {data['budgets']}; {data['seconds']:.0f} s -->")
    for model in ("detector", "classifier"):
        if model not in data:
            continue
        print(f"\n{model}: deletion AUC (lower is better) mean / blur substrate · insertion AUC (higher is better) "
              f"mean / blur substrate\n")
        print("| method | hides with | " + " | ".join(f"{b}" for b in data["budgets"]) + " |")
        print("|---|---|" + "---|" * len(data["budgets"]))
        for method, by_hide in data[model].items():
            for hide, by_budget in by_hide.items():
                cells = []
                for b in data["budgets"]:
                    r = by_budget[str(b)]
                    used = "" if r["n_forward"] == b else f" ({r['n_forward']})"
                    cells.append(f"{r['deletion/mean']:.3f} / {r['deletion/blur']:.3f} · "
                                 f"{r['insertion/mean']:.3f} / {r['insertion/blur']:.3f}{used}")
                print(f"| {method} | {hide} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=["shapley", "families", "ratios", "quality"])
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--kind", default="real")
    parser.add_argument("--file", default=None)
    args = parser.parse_args()
    if args.table == "shapley":
        shapley(args.split, args.kind)
    elif args.table == "families":
        families(args.split)
    elif args.table == "ratios":
        ratios(args.split)
    else:
        quality(args.file or str(RESULTS / f"quality_{args.split}_detector_classifier.json"))


if __name__ == "__main__":
    main()
