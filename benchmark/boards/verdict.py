"""The verdict of a run in plain words, and warnings where the numbers cannot mean what they seem.

Built only from ``results.json`` fields (README: "Reading the results"); every field may be missing:

- per attribute (text: ``race``, ``gender``, ``intersection`` of each question; imaging: the audit's
  test targets), whether a **paired** test finds an effect after the run's multiple-testing
  correction (``tests[].significant`` / ``p_adjusted``); a test whose ``p_value`` is ``None`` is
  *not applicable* (no variation to test), never "no effect";
- the largest signed paired effect ``delta_vs_reference`` with its simultaneous interval (text: at the
  run's correction level, so it excludes 0 exactly when that contrast's test is significant; where an
  omnibus test rejects without any contrast, the line says so), the size of the evidence (cases,
  requests), and for an attribute without an effect the smallest contrast the design detects at 80%
  power (``mde_80``);
- warnings: the same decision for every case and group (flip rate and gaps of 0 then say nothing),
  accuracy at or below always giving the majority answer (when the run records it), groups whose
  requests are all invalid, and the audit's own warnings (groups below ``min_group_size``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Finding:
    """One attribute's verdict. ``status``: ``effect`` | ``no effect found`` | ``not applicable``."""

    scope: str  # "treat / race" or an imaging target
    status: str
    p_adjusted: float | None = None
    test: str | None = None
    effect: str | None = None  # "race=Black - White: -0.135 [-0.15, -0.10] (simultaneous 99.7%)"
    n: int | None = None
    mde: float | None = None  # the largest contrast MDE at 80% power of the attribute (delta_vs_reference[].mde_80)
    why: str | None = None  # why the verdict and the shown interval can differ by construction


@dataclass
class Verdict:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_cases: int | None = None
    n_requests: int | None = None
    n_invalid: int | None = None

    @property
    def any_effect(self) -> bool:
        return any(f.status == "effect" for f in self.findings)

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        """The verdict as plain lines (first the summary, then one line per attribute, then warnings)."""
        run = []
        evidence = ", ".join(x for x in (
            f"{self.n_cases} cases" if self.n_cases is not None else "",
            f"{self.n_requests} requests" if self.n_requests is not None else "",
            f"{self.n_invalid} invalid" if self.n_invalid else "",
        ) if x)
        if not self.findings:
            run.append(f"verdict: no paired test in these results{f' ({evidence})' if evidence else ''}.")
        elif self.any_effect:
            n = sum(f.status == "effect" for f in self.findings)
            run.append(f"verdict: EFFECT FOUND for {n} of {len(self.findings)} attribute(s) after correction ({evidence}).")
        elif all(f.status == "not applicable" for f in self.findings):
            run.append(f"verdict: NOT TESTABLE: no paired test applies ({evidence}).")
        else:
            mdes = [f.mde for f in self.findings if f.mde is not None and f.status == "no effect found"]
            detects = f"; this design detects contrasts >= {max(mdes):.2g} at 80% power" if mdes else ""
            run.append(f"verdict: no effect found after correction ({evidence}){detects}; absence of evidence, not proof of fairness.")
        for f in self.findings:
            p = f" (p_adj {f.p_adjusted:.3g}, {f.test}, n={f.n})" if f.p_adjusted is not None else (f" ({f.test})" if f.test else "")
            largest = f"; largest effect {f.effect}" if f.effect else ""
            mde = f"; detects >= {f.mde:.2g} at 80% power" if f.mde is not None and f.status == "no effect found" else ""
            why = f" [{f.why}]" if f.why else ""
            run.append(f"  {f.scope}: {f.status}{p}{largest}{mde}{why}")
        run.extend(f"warning: {w}" for w in self.warnings)
        return run


def _num(x) -> float | None:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def simultaneous_label(est: dict) -> str:
    """" (simultaneous 99.7%)" for a contrast whose interval is simultaneous over its family at the
    run's correction level (``confidence``), else ""."""
    conf = _num(est.get("confidence")) if isinstance(est, dict) else None
    return f" (simultaneous {100 * conf:.3g}%)" if conf is not None and _num(est.get("ci_low")) is not None else ""


def _ci(est: dict) -> str:
    v, lo, hi = _num(est.get("value")), _num(est.get("ci_low")), _num(est.get("ci_high"))
    if v is None:
        return "-"
    return (f"{v:+.3g} [{lo:.3g}, {hi:.3g}]{simultaneous_label(est)}" if lo is not None and hi is not None
            else f"{v:+.3g}")


def _attribute_tests(tests: list[dict], paired_only: bool = True) -> dict[str, list[dict]]:
    """Tests grouped by their target without the endpoint (``treat/race/outcome`` -> ``treat/race``);
    counterfactual audits are judged by their paired tests only."""
    out: dict[str, list[dict]] = {}
    for t in tests:
        if not isinstance(t, dict) or (paired_only and t.get("paired") is False):
            continue
        target = str(t.get("target", "?"))
        scope = target.rsplit("/", 1)[0] if target.count("/") >= 2 else target
        out.setdefault(scope, []).append(t)
    return out


OMNIBUS_ONLY = ("an omnibus test rejects, but no single value differs from the reference at the family's level, "
                "so every simultaneous contrast interval contains 0")


def _finding(scope: str, tests: list[dict], effect: str | None, attr: dict | None = None) -> Finding:
    real = [t for t in tests if _num(t.get("p_value")) is not None]
    if not real:
        return Finding(scope.replace("/", " / "), "not applicable", test=", ".join(sorted({str(t.get("test")) for t in tests})) + ": no variation")
    best = min(real, key=lambda t: _num(t.get("p_adjusted")) if _num(t.get("p_adjusted")) is not None else 2.0)
    significant = any(t.get("significant") for t in real)
    deltas = [e for e in ((attr or {}).get("delta_vs_reference") or {}).values() if isinstance(e, dict)]
    mdes = [_num(e.get("mde_80")) for e in deltas if _num(e.get("mde_80")) is not None]
    contrast_tested = [e for e in deltas if e.get("significant") is not None]
    why = None
    if significant and contrast_tested and not any(e.get("significant") for e in contrast_tested):
        why = OMNIBUS_ONLY
    return Finding(scope.replace("/", " / "), "effect" if significant else "no effect found",
                   _num(best.get("p_adjusted")), best.get("test"), effect, best.get("n"),
                   mde=max(mdes) if mdes else None, why=why)


def _largest_delta(attr: dict) -> str | None:
    deltas = attr.get("delta_vs_reference") if isinstance(attr, dict) else None
    if not isinstance(deltas, dict):
        return None
    best = None
    for value, est in deltas.items():
        v = _num(est.get("value")) if isinstance(est, dict) else None
        if v is not None and (best is None or abs(v) > abs(best[1])):
            best = (value, v, est)
    if best is None:
        return None
    ref = attr.get("reference")
    return f"{best[0]}{f' vs {ref}' if ref else ''}: {_ci(best[2])}"


def _constant_decisions(q: dict) -> bool:
    """Every group's decision rate is 0 (or every one is 1) and no case flips."""
    flip = q.get("cf_flip_rate")
    if not isinstance(flip, dict) or _num(flip.get("value")) != 0:
        return False
    rates = []
    for attr in (q.get("attributes") or {}).values():
        for g in (attr.get("groups") or {}).values() if isinstance(attr, dict) else ():
            rate = g.get("decision_rate") if isinstance(g, dict) else None
            if isinstance(rate, dict) and _num(rate.get("value")) is not None:
                rates.append(rate["value"])
    return bool(rates) and (all(r == 0 for r in rates) or all(r == 1 for r in rates))


JUDGE_ONLY = "judge only: not a finding"


def _judge_findings(judge: dict, cf_tests: list) -> list[Finding]:
    """Findings from an LLM judge's tests (``judge.json``, benchmark.judge). A judge is never the only
    evidence: a significant judge test becomes an ``effect`` only when the rule-based paired test of
    the same question and attribute (the generative audit's ``<q>/<attr>/mention``) is significant
    too; otherwise its status is :data:`JUDGE_ONLY`, which ``any_effect`` does not count."""
    rule = {str(t.get("target")): t for t in cf_tests if isinstance(t, dict)}
    out = []
    for scope, tests in _attribute_tests(judge.get("tests") or []).items():
        f = _finding(scope, tests, None)
        f.scope += " (judge)"
        if f.status == "effect":
            corroborating = rule.get(f"{scope}/mention") or {}
            if not corroborating.get("significant"):
                f.status = JUDGE_ONLY
                f.effect = "no significant rule-based test (demographic-mention detector) of the same scope"
            else:
                f.effect = f"corroborated by {corroborating.get('test')} on {scope}/mention (p_adj {_num(corroborating.get('p_adjusted')) or 0:.3g})"
        out.append(f)
    return out


def build(results: dict, judge: dict | None = None) -> Verdict:
    """The :class:`Verdict` of a results dict (``results.json``), with the findings of an LLM judge
    (``judge.json``) when given (:func:`_judge_findings`). Never raises on missing fields."""
    results = results if isinstance(results, dict) else {}
    run = results.get("run") or {}
    v = Verdict(n_cases=run.get("n_cases") or (results.get("metrics") or {}).get("n_cases"),
                n_requests=results.get("n_requests"), n_invalid=results.get("n_invalid"))
    audits = results.get("audits") or {}
    cf = audits.get("counterfactual") or {}
    questions = cf.get("questions") or {}
    for scope, tests in _attribute_tests(cf.get("tests") or []).items():
        qid, _, attr = scope.partition("/")
        ares = ((questions.get(qid) or {}).get("attributes") or {}).get(attr) or {}
        v.findings.append(_finding(scope, tests, _largest_delta(ares), ares))
    for qid, q in questions.items():
        if isinstance(q, dict) and _constant_decisions(q):
            v.warnings.append(f"{qid}: the model gives the same decision in every case and group; cf_flip_rate and dp_gap "
                              "of 0 show no discrimination by decision, not fairness (look at the probabilities: cf_mean_abs_delta).")
        acc, majority = (q.get("accuracy") or {}) if isinstance(q, dict) else {}, q.get("majority_rate") if isinstance(q, dict) else None
        if isinstance(acc, dict) and _num(acc.get("value")) is not None and _num(majority) is not None and acc["value"] <= majority:
            v.warnings.append(f"{qid}: accuracy {acc['value']:.3g} is at or below always giving the majority answer ({majority:.3g}).")
    for attr, groups in (cf.get("invalid_by_group") or {}).items():
        for group, rate in (groups or {}).items() if isinstance(groups, dict) else ():
            if _num(rate) == 1:
                v.warnings.append(f"{attr}={group}: every request of this group is invalid; the group is unmeasurable.")
    if isinstance(judge, dict):
        v.findings.extend(_judge_findings(judge, cf.get("tests") or []))
        for t in judge.get("validity_tests") or []:
            if isinstance(t, dict) and t.get("significant"):
                scope = str(t.get("target", "")).removesuffix("/judge_invalid")
                v.warnings.append(f"{scope}: the judge's grades are invalid more often for some groups ({t.get('test')}, "
                                  f"p_adj {_num(t.get('p_adjusted')) or 0:.3g}); its reliance rates there compare different subsets.")
        v.warnings.append("the judge's tests are corrected in their own family (after the run's); a judge effect counts "
                          "only with a significant rule-based test of the same scope")
    group_audit = audits.get("group") or {}
    for scope, tests in _attribute_tests(group_audit.get("tests") or [], paired_only=False).items():
        v.findings.append(_finding(scope, tests, None))
    for audit in audits.values():
        if isinstance(audit, dict):
            v.warnings.extend(str(w) for w in audit.get("warnings") or [] if str(w) not in v.warnings)
    v.warnings.extend(str(w) for w in results.get("warnings") or [] if str(w) not in v.warnings)
    return v


def print_verdict(results: dict, console=None, judge: dict | None = None) -> Verdict:
    """Print the verdict lines (``console``: a rich Console, else plain stdout); returns the Verdict."""
    v = build(results, judge)
    for line in v.lines():
        if console is None:
            print(line)
        else:
            from .terminal import print_line

            print_line(console, line)
    return v
