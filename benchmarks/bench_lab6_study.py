"""Lab 6's study on TinyViT beside the study it reproduces (shared/seeds/003: a ViT on CIFAR-10, in Chinese).

    .venv/bin/python benchmarks/bench_lab6_study.py [--write] [--recompute] [--threads 1]

Reads the precompute ``lowbit/checkpoints/vit_study.json`` (``python -m lowbit.quant.mixed_train --write``,
≈ 45 min on the shared 2-core machine, or ``--update TASK ...`` to re-run a few tasks on top of it;
``--recompute`` runs the whole precompute here first, without writing the JSON) and prints,
for every finding of the study, its figure beside ours: all 38 products at INT4 (dynamic per-tensor unsigned
min-max, both operands), the fraction of the products (operations, as the study counted) and of the
multiplications at INT4 within a 2 / 5 / 10 % accuracy budget along the greedy curve, whether that curve is
monotone, the six least sensitive at INT2, all at INT2, INT4 QAT, the gradual INT4 → INT2 path and QAT at INT2
from scratch; then the exact bit allocation (``mixed.allocate_bits``) against greedy at each budget, with its
*true* accuracy. Every accuracy on the full Fashion-MNIST test set (10,000 images). ``--write`` puts the tables
into benchmarks/RESULTS.md ("Lab 6 — the INT4/INT2 study on TinyViT").
"""
from __future__ import annotations

import torch

import _accuracy
from _results import write_section
from lowbit.quant import mixed_train as MT

TITLE = "Lab 6 — the INT4/INT2 study on TinyViT"


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}"


def rises(curve: list[float]) -> int:
    """Steps of the greedy curve where switching one more product to INT4 raised the accuracy."""
    return sum(b > a for a, b in zip(curve, curve[1:]))


def findings(s: dict) -> list[tuple[str, str, str]]:
    """(finding, the study's figure, ours) rows."""
    fig, fp, names = s["study"], s["fp"], s["names"]
    p = len(names)
    rows = [("FP32 accuracy", f"{fig['fp']:.2f} %", f"{pct(fp)} %"),
            ("all 38 products INT4 (PTQ)", f"{fig['all_int4_ptq']:.2f} % ({fig['all_int4_ptq'] - fig['fp']:+.2f})",
             f"{pct(s['ptq']['all_int4'])} % ({100 * (s['ptq']['all_int4'] - fp):+.2f})")]
    for budget, b in s["budgets"].items():
        study = fig["within"].get(str(float(budget)), fig["within"].get(budget))
        rows.append((f"INT4 within {100 * float(budget):.0f} %: share of products (operations)",
                     f"{100 * study:.1f} %", f"{100 * b['operations']:.1f} % ({b['products']}/{p})"))
        rows.append((f"INT4 within {100 * float(budget):.0f} %: share of multiplications", "— (not counted)",
                     f"{100 * b['multiplies']:.1f} %"))
    curve = s["greedy_curve"]
    rows.append(("greedy curve monotone?", "no: peaks at 80.37 % > FP, 14 rises",
                 f"{'no' if rises(curve) else 'yes'}: best {pct(max(curve))} % vs FP {pct(fp)} %, "
                 f"{rises(curve)} rises"))
    rows += [("six least sensitive at INT2, rest float", f"{fig['six_int2']:.2f} %", f"{pct(s['ptq']['six_int2'])} %"),
             ("all 38 at INT2 (PTQ)", f"{fig['all_int2_ptq']:.2f} %", f"{pct(s['ptq']['all_int2'])} %")]
    if "qat" in s:
        after = " → ".join([pct(s["qat"]["stage1"]["accuracy"])] + [pct(st["accuracy"])
                                                                     for st in s["qat"].get("stages", [])])
        rows.append(("INT4 QAT (all 38)", f"{fig['qat_int4']:.2f} % (FP {fig['qat_int4_from']:.2f} %)",
                     f"{pct(s['qat']['accuracy'])} % (FP {pct(fp)} %, {100 * (s['qat']['accuracy'] - fp):+.2f} pt; "
                     f"after each stage: {after} %)"))
        g = s["gradual"]
        rows.append(("gradual INT4 → INT2, all 38 at INT2", f"{fig['gradual_int2']:.2f} %",
                     f"{pct(g['end_accuracy'])} % (from {pct(g['start_accuracy'])} %; embedded subset along the "
                     f"path: {' → '.join(pct(a, 1) for a in g['curve_embedded'][::6])})"))
        labels = {"int2": "QAT at INT2 from scratch (LSQ+ ranges)", "int2_dynamic": "  same, dynamic min-max + STE",
                  "fp32": "  float control, same recipe from scratch"}
        for label, run in s["scratch"].items():
            loss = " → ".join("NaN" if x is None else f"{x:.3f}" for x in run["epoch_losses"])
            rows.append((labels.get(label, label), f"{fig['scratch_int2']:.2f} %, loss NaN" if label == "int2" else "—",
                         f"{' → '.join(pct(a) for a in run['epoch_accuracies'])} % per epoch, loss {loss}"))
    return rows


def allocation_rows(s: dict) -> list[str]:
    lines = []
    fp = s["fp"]
    for choices, rows in s.get("allocation", {}).items():
        widths = choices.split("+")
        lines += ["", f"**Exact allocation over {{{', '.join(widths)}}} bits** (`mixed.allocate_bits`, additive model of "
                  "the single-product drops; the smallest multiply-weighted bit budget whose optimum predicts a drop "
                  "within margin × budget, the largest margin whose true accuracy meets the budget), against greedy "
                  "(INT4 prefix of the ranking, the rest float):", "",
                  "| budget | greedy: multiplies at INT4 | greedy accuracy | exact: multiplies at "
                  + " / ".join(widths) + " bits | margin | predicted | true accuracy | meets budget | ≥ greedy's "
                  "low-bit multiplies |", "|---|---|---|---|---|---|---|---|---|"]
        for budget, r in rows.items():
            c = r["chosen"]
            lines.append(f"| {100 * float(budget):.0f} % (≥ {pct(fp - float(budget))} %) | "
                         f"{100 * r['greedy_multiplies_int4']:.1f} % | {pct(r['greedy_accuracy'])} | "
                         + " / ".join(f"{100 * c['multiplies'][w]:.1f}" for w in widths) + " % | "
                         f"{c['margin']:.2f} | {pct(c['predicted'])} | {pct(c['accuracy'])} | "
                         f"{'yes' if r['meets_budget'] else 'NO'} | "
                         f"{'yes' if r['covers_at_least_greedy'] else 'NO'} ({100 * r['multiplies_at_most_4_bits']:.1f} %) |")
    return lines


def qat_text(stages: list[dict]) -> str:
    """The INT4 QAT stages in words: "1 epoch … at lr 0.0001, then 0.5 epoch at lr 3e-05, then …"."""
    first, *rest = stages
    return ", then ".join([f"{first['fraction'] * first['epochs']:g} epoch of the 60,000 training images at lr "
                           f"{first['lr']:g}"] + [f"{st['fraction'] * st['epochs']:g} epoch at lr {st['lr']:g}"
                                                  for st in rest])


def updates_text(s: dict) -> str:
    """How the study was last touched: "" for one full precompute, else the tasks re-run on top of it."""
    updates = s.get("updates", [])
    if not updates:
        return ""
    return "; then " + ", then ".join(f"`--update {' '.join(u['tasks'])}` in {u['seconds'] / 60:.1f} min"
                                      for u in updates) + (" re-ran those tasks on top of it: every other section is "
                                                           "the earlier run's, whose recipe for it is unchanged")


def report(s: dict) -> str:
    recipe, t = s["recipe"], s["timings"]
    q, g, sc = recipe["qat"]["stages"], recipe["gradual"], recipe["scratch"]
    start = "the final INT4 QAT model" if g["start"] == "qat" else "the first QAT stage"
    lines = [f"`benchmarks/bench_lab6_study.py --write`, from `lowbit/checkpoints/vit_study.json` "
             f"(`python -m lowbit.quant.mixed_train --write`, torch {s['torch_version']}, {s['threads']} thread, "
             f"seed {s['seed']}, {t['total'] / 60:.1f} min on the shared 2-core machine{updates_text(s)}). Every "
             "product's operands quantized per tensor, unsigned, min-max (dynamic) for PTQ; QAT with LSQ+ learned "
             f"ranges per operand (INT4, plain QAT: {qat_text(q)}, each stage Adam decayed to 0 on a cosine; "
             f"gradual, from {start}: {g['steps']} batches of 128 after each switch at lr {g['lr']:g}; scratch: "
             f"{sc['epochs']} epochs of {sc['fraction']:g} × 60,000 images at lr {sc['lr']:g}). Accuracy on the "
             f"{s['test_set']}; the study's figures are a ViT on CIFAR-10 (its own test set).", "",
             "| finding | study (ViT, CIFAR-10) | ours (TinyViT, Fashion-MNIST) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in findings(s)]
    lines += allocation_rows(s)
    lines += ["", "Seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = _accuracy.parser(__doc__)
    parser.add_argument("--recompute", action="store_true", help="run the precompute here (≈ 45 min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.recompute:
        import tempfile

        study = MT.run_study(tempfile.mkdtemp(prefix="vit_study_"), progress=not args.no_progress)
    else:
        study = MT.load_study()
    text = report(study)
    print(text)
    if args.write:
        write_section(TITLE, text)


if __name__ == "__main__":
    main()
