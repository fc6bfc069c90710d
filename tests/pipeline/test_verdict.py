"""The verdict at the top of every report: what it says when training helped, changed nothing, or hurt."""

from pipeline._verdict import verdict, verdict_markdown


def task(deltas: dict[str, tuple[float, list[float], float]], gap: dict | None = None) -> dict:
    """A retrieval summary: base 0.232; model -> (delta, interval, p)."""
    average = {"base": {"x->eng acc@1": 0.232, "n": 69, "languages": 3}}
    average |= {m: {"x->eng acc@1": 0.232 + d, "n": 69, "languages": 3} for m, (d, _, _) in deltas.items()}
    return {"metrics": ["x->eng acc@1"], "primary": "x->eng acc@1", "average": average, "confidence": 0.95,
            "delta_ci": {m: {"x->eng acc@1": ci} for m, (_, ci, _) in deltas.items()},
            "delta_p": {m: {"x->eng acc@1": p} for m, (_, _, p) in deltas.items()},
            "detectable": {"x->eng acc@1": 0.081}, "gap_closed": gap or {}}


FIDELITY = {"per_strategy": {"icl": {"positive_nearest": 0.04, "positive_cos": 0.21, "n": 120, "chance_nearest": 0.03},
                             "parallel": {"positive_nearest": 1.0, "positive_cos": 1.0, "n": 97, "chance_nearest": 0.03}}}


def test_helped_names_the_best_encoder_its_gain_and_the_synthetic_gap():
    gap = {"icl": {"x->eng acc@1": {"value": 0.06, "ci": [-0.2, 0.31], "undefined_share": 0.0}}}
    v = verdict({"tasks": {"retrieval": task({"parallel": (0.246, [0.12, 0.36], 0.0005), "icl": (0.014, [-0.04, 0.07], 0.62)},
                                             gap)}}, FIDELITY)
    assert v["outcome"] == "helped" and v["best"] == "parallel" and v["best_synthetic"] == "icl"
    text = "\n".join(verdict_markdown(v))
    assert ("**Training helped. The best encoder, `parallel`, scores 0.478 against the base's 0.232 (held-out UDHR bitext "
            "retrieval, x->eng acc@1, 69 items in 3 language(s)): Δ +0.246 [+0.120, +0.360], p < .001.**") in text
    assert "- `icl`: 0.246 vs base 0.232, Δ +0.014 [-0.040, +0.070], p = .620: no measurable difference; closes 6% [-20%, 31%]" in text
    assert "`icl` 4% (cos(pos, ref) 0.21, 120 triplets); chance is about 3%" in text and "stronger generator" in text
    assert "detects a difference of about ±0.081" in text


def test_no_change_and_hurt_say_so():
    same = verdict({"tasks": {"retrieval": task({"icl": (-0.014, [-0.07, 0.04], 0.7)})}}, None)
    assert same["outcome"] == "no_change" and same["headline"].startswith("No measurable change.")
    assert "every interval contains 0" in same["headline"]
    hurt = verdict({"tasks": {"retrieval": task({"icl": (-0.1, [-0.18, -0.03], 0.01)})}}, None)
    assert hurt["outcome"] == "hurt" and hurt["headline"].startswith("Training hurt. `icl` scores 0.132")


def test_without_udhr_the_verdict_uses_the_users_parallel_text():
    t = task({"parallel": (0.2, [0.1, 0.3], 0.001)})
    v = verdict({"tasks": {"retrieval": {**t, "average": {}}, "parallel": t}}, None)
    assert v["task"] == "parallel" and "retrieval on your parallel text" in v["headline"]
    assert verdict({"tasks": {"retrieval": {**t, "average": {}}}}, None) is None
