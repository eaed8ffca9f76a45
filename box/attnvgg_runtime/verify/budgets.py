"""The judgement of a case's measures (attnvgg_runtime.verify.measures) against a budget: what
breaks it and by what margin it holds. numpy and the standard library only: the gate on the
build machine and the verifier on a target box judge with exactly this. The budgets themselves
are the toolchain's (attnvgg_export/verify/tolerances.toml), recorded in the manifest for the box."""

from __future__ import annotations

from attnvgg_runtime.verify.accuracy import drop_verdict
from attnvgg_runtime.verify.findings import Finding, agreement_margin, error_margin

METRICS = ("rel_l2_max", "rel_l2_image_max", "cosine_min", "top1_min", "top5_min",
           "accuracy_drop_max", "drift_max", "agreement_max", "agreement_factor", "derived_max",
           "derived_excess_max", "frame_max")
DRIFT_FLOOR = 1e-4  # rel L2 differences below this are kernel noise, not drift
AGREEMENT_METRICS = ("top1_min", "top5_min")  # meaningful only for trained weights


PRECISION_BUDGETS = ("fp32", "fp16", "bf16", "int8")


def resolvable(key: str, result: dict, budget: dict) -> bool:
    """Whether ``result`` has independent images enough (``sources``, where counted; else
    ``images``) to hold the agreement budget ``key``: one image's top-1
    disagreement moves top-1 agreement by 1/N, one class of its top-5 by 1/(5N); a budget that
    allows less than that demands perfection, whatever it says (top-1 >= 0.95 on 8 images means
    no disagreement at all). Elsewhere the figure is reported and not gated."""
    if key not in AGREEMENT_METRICS or budget[key] >= 1:  # perfection is measurable on any number
        return True
    # independent images: crops of one photograph, or one image repeated, agree or not together
    step = 1 / result.get("sources", result["images"]) / (5 if key == "top5_min" else 1)
    return step <= 1 - budget[key] + 1e-12


def judged_by_labels(key: str, result: dict, budget: dict) -> bool:
    """Whether a top-1/top-5 agreement budget short of perfection gives way to the paired
    accuracy drop, because the case has labels: agreement is the label-free stand-in for "does
    the artifact classify as eager does", and a flip between two wrong classes, or on an image
    eager itself gets wrong, counts against agreement and costs no accuracy. On a trained digits
    model int8 flipped 2 of 39 labelled held-out digits (agreement 0.949 against 0.95) and lost 1
    of 600 on EVAL_DIR (a drop within budget). There it is reported; accuracy_drop_max judges."""
    return key in AGREEMENT_METRICS and budget.get(key, 1) < 1 and "accuracy" in result


def agreement_gated(key: str, result: dict, budget: dict) -> bool:
    """An agreement budget gates a case where its images resolve it and no label judges instead."""
    return resolvable(key, result, budget) and not judged_by_labels(key, result, budget)


def budget_margin(result: dict, budget: dict, trained: bool) -> float:
    """How many times over ``result`` fits inside ``budget``: the smallest ratio of allowed to
    measured error over the budgeted metrics (1.0: exactly at the budget; below 1: a breach).
    Errors are rel L2 and one minus cosine, top-1 and top-5 (those with trained weights only)."""
    if not result["finite"]:
        return 0.0
    used = {"rel_l2_max": result["rel_l2"], "cosine_min": 1 - result["cosine"]}
    if "rel_l2_image" in result:
        used["rel_l2_image_max"] = result["rel_l2_image"]
    if trained:
        used |= {"top1_min": 1 - result["top1"], "top5_min": 1 - result["top5"]}
    ratios = [(budget[k] if k.startswith("rel_l2") else 1 - budget[k]) / v if v > 0 else float("inf")
              for k, v in used.items() if k in budget and agreement_gated(k, result, budget)]
    return min(ratios, default=float("inf"))


def heldout_accuracy(result: dict, budget: dict) -> dict | None:
    """The top-1 drop of a case with labels (the held-out images of a labelled CALIB_DIR),
    judged as EVAL_DIR's is (attnvgg_runtime.verify.accuracy.drop_verdict: it fails over budget
    with confidence, or by a point estimate these images can resolve; "not resolvable" is a
    warning); None where the case has no labels or the budget none."""
    if "accuracy" not in result or "accuracy_drop_max" not in budget:
        return None
    return drop_verdict(result["lost"], result["gained"], result["images"], budget["accuracy_drop_max"])


def breaches(result: dict, budget: dict, trained: bool, built: float | None = None) -> list[Finding]:
    """What breaks the budget, as records (attnvgg_runtime.verify.findings). ``built``: the rel
    L2 the precision stage measured for this artifact on the same held-out images; drifting past
    it means the file no longer computes what the build measured."""
    found = [] if result["finite"] else [Finding("finite", "NaN or Inf in the outputs")]
    if built is not None and "drift_max" in budget:
        allowed = built * (1 + budget["drift_max"]) + DRIFT_FLOOR
        if result["rel_l2"] > allowed:
            found.append(Finding(
                "drift_max", f"drift: rel L2 {result['rel_l2']:.4g}, the build measured {built:.4g} on "
                f"the same images (allowed {allowed:.4g}): the artifact changed since it was measured",
                measured=result["rel_l2"], budget=allowed, margin=error_margin(result["rel_l2"], allowed)))
    checks = {
        "rel_l2_max": (result["rel_l2"], lambda v, b: v <= b),
        "rel_l2_image_max": (result.get("rel_l2_image", 0.0), lambda v, b: v <= b),
        "cosine_min": (result["cosine"], lambda v, b: v >= b),
        "top1_min": (result["top1"], lambda v, b: v >= b),
        "top5_min": (result["top5"], lambda v, b: v >= b),
    }
    judged = heldout_accuracy(result, budget)
    if judged is not None and judged["fails"]:
        found.append(Finding(
            "accuracy_drop_max",
            f"accuracy drop {100 * judged['drop']:.2f} points, 95% interval "
            f"[{100 * judged['low']:.2f}, {100 * judged['high']:.2f}] on {result['images']} images "
            f"({result['lost']} lost, {result['gained']} gained; budget "
            f"{100 * budget['accuracy_drop_max']:.2f}): {judged['verdict']}"
            + ("" if judged["verdict"] == "over budget" else ", by its point estimate"),
            measured=judged["drop"], budget=budget["accuracy_drop_max"],
            margin=error_margin(judged["drop"], budget["accuracy_drop_max"])))
    for key, (value, ok) in checks.items():
        gated = key in budget and (trained or key not in AGREEMENT_METRICS)
        if gated and agreement_gated(key, result, budget) and not ok(value, budget[key]):
            name = "worst image's rel L2" if key == "rel_l2_image_max" else key.rsplit('_', 1)[0]
            margin = (error_margin if key.startswith("rel_l2") else agreement_margin)(value, budget[key])
            found.append(Finding(key, f"{name} {value:.4g} (budget {budget[key]:.4g})", measured=value,
                                 budget=budget[key], margin=margin))
    return found
