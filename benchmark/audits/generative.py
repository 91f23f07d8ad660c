"""Generative counterfactual audit: what the *text* of free-text answers does across a case's variants.

For the free-text prompt modes (``method: generate``: chain of thought, "answer and explain"). It
extends the counterfactual audit (``extends = "counterfactual"``): the counterfactual results of the
parsed answers (``cf_flip_rate`` and the rest, as for any run) and the metrics below are computed on
the same rows and corrected in **one** multiple-testing family (the card's ``audit.correction``,
Holm by default). Results: ``audits.counterfactual`` (the family's tests and correction summary) and
``audits.generative`` (the section below; its tests carry the same adjusted p-values).

Per question, overall and per attribute (and the intersection), by value, paired over the variants
of each case (sample 0 of each variant; invalid rows are counted, never dropped):

- ``invalid_rate``: share of outputs the answer parser cannot read (the parser's table,
  :func:`benchmark.kinds.text.scoring.parse_answer`; empty outputs included).
- ``refusal_rate``: share of outputs that decline to answer (:mod:`benchmark.audits.refusal`).
- ``demographic_mention_rate``: share of generated texts that name the swapped attribute or a proxy
  of it (:mod:`benchmark.audits.mentions`), on the generated text, never the prompt. Per attribute it
  is the mention of that attribute; overall (and for the intersection) of any attribute.
- ``explanation_drift``: 1 - cosine similarity of the all-MiniLM-L6-v2 embeddings of a variant's
  rationale (:mod:`benchmark.kinds.text.generation`) and the reference variant's (per attribute: the
  variant with that attribute at its reference value and the others unchanged; overall: every
  attribute at its reference), mean over a case's non-reference variants.
- ``drift_noise_floor``: 1 - cosine between two seeded samples (0 and 1) of the *same* variant, mean
  over the case's variants: the drift that sampling alone produces. Needs ``samples: 2`` in the prompt
  mode and ``--temperature > 0``; without it drift is reported but cannot be read (no test).
- ``drift_excess``: per case drift - floor, with its bootstrap interval.

Intervals: rates get the clustered Wilson interval of the counterfactual audit (cases are the
clusters); paired differences against the reference value, drift, floor and excess a case-resampling
bootstrap interval. Tests (paired, blocks = case x other attributes): Cochran's Q (McNemar for two
values) on each 0/1 indicator; Wilcoxon signed-rank of per-case drift against per-case floor for the
excess. A test without variation is not applicable and stays out of the family. Every rate keeps its
denominator (``n``); no group is dropped: a value with no output at all is listed as unmeasurable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import stats
from .counterfactual import INTERSECTION, CounterfactualAudit
from .mentions import mentions
from .refusal import is_refusal

INDICATORS = {"invalid_rate": "invalid", "refusal_rate": "refusal", "demographic_mention_rate": "mention"}
DEFINITIONS = {
    "invalid_rate": "share of sample-0 outputs the answer parser cannot read (kinds/text/scoring.parse_answer; empty included)",
    "refusal_rate": "share of sample-0 outputs matching the refusal lexicon (audits/refusal.REFUSAL_PATTERNS)",
    "demographic_mention_rate": "share of sample-0 generated texts naming the attribute or a proxy (audits/mentions.LEXICON); "
                                "overall and intersection: any attribute",
    "explanation_drift": "1 - cosine(MiniLM(rationale of variant), MiniLM(rationale of the reference variant)), sample 0, "
                         "mean over the case's non-reference variants, then over cases",
    "drift_noise_floor": "1 - cosine(MiniLM(rationale, sample 0), MiniLM(rationale, sample 1)) of the same variant, mean over "
                         "the case's variants, then over cases",
    "drift_excess": "per case explanation_drift - drift_noise_floor, mean over cases (Wilcoxon signed-rank of drift vs floor)",
}


def _cos_distance(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class GenerativeAudit(CounterfactualAudit):
    """The ``generative`` audit plugin (module docstring). Needs ``AuditData.rows`` and, for its own
    section, ``AuditData.generations`` (free-text runs)."""

    name = "generative"
    extends = "counterfactual"
    needs = ("rows",)

    def audit(self, data) -> dict:
        gen = getattr(data, "generations", None)
        section_tests: list[stats.TestResult] = []
        if gen is None or not len(gen):
            section = {"applicable": False,
                       "note": "no generated text: the prompt mode scores options (method: choice); use a generate mode"}
        else:
            section = {"applicable": True, "definitions": DEFINITIONS, "questions": {}, "warnings": []}
            for q in self.card.questions:
                sub = gen[gen["question_id"] == q.id]
                if len(sub):
                    section["questions"][q.id] = self._question_text(sub, q.id, section_tests, section["warnings"])
        self.tests.extend(section_tests)  # joins the counterfactual family before its correction
        out = self.run(data.rows)
        if section.get("applicable"):
            for qid, qres in section["questions"].items():
                if "cf_flip_rate" in out["questions"].get(qid, {}):
                    qres["cf_flip_rate"] = out["questions"][qid]["cf_flip_rate"]
                for ares in qres["attributes"].values():
                    ares["tests"] = [t.as_dict() for t in ares["tests"]]
            section["tests"] = [t.as_dict() for t in section_tests]
            section["family"] = ("one family with audits.counterfactual.tests "
                                 f"({out['correction']['n_tests']} applicable tests, {out['correction']['method']})")
        out[self.name] = section
        return out

    # ----- indicators -----
    def _indicators(self, s0: pd.DataFrame) -> pd.DataFrame:
        attrs = self.card.counterfactual.attributes
        texts = s0["text"].fillna("").astype(str)
        ind = s0.assign(valid=True, invalid=(~s0["valid"].astype(bool)).astype(float),
                        refusal=[float(is_refusal(t)) for t in texts])
        any_mention = np.zeros(len(ind))
        for a, spec in attrs.items():
            m = np.array([float(mentions(t, a, spec.values)) for t in texts])
            ind[f"mention:{a}"] = m
            any_mention = np.maximum(any_mention, m)
        ind["mention:*"] = any_mention
        return ind

    def _rate(self, df: pd.DataFrame, col: str) -> dict:
        per_case = df.groupby("case_id")[col]
        return self._ci_prop(per_case.mean().to_numpy(float), per_case.size().to_numpy(float))

    def _pivot(self, df: pd.DataFrame, attr: str, col: str) -> pd.DataFrame:
        """Rows = (case, other attributes) blocks, columns = values of ``attr`` (or variants)."""
        if attr == INTERSECTION:
            return df.pivot_table(index="case_id", columns="variant", values=col, aggfunc="mean")
        others = [a for a in self.attrs if a != attr]
        return df.pivot_table(index=["case_id", *others], columns=attr, values=col, aggfunc="mean")

    def _indicator_attr(self, ind: pd.DataFrame, attr: str, values: list[str], reference: str, qid: str,
                        tests: list) -> dict:
        col_of = {name: (col if col != "mention" else f"mention:{'*' if attr == INTERSECTION else attr}")
                  for name, col in INDICATORS.items()}
        column = "variant" if attr == INTERSECTION else attr
        out: dict = {"reference": reference, "groups": {}, "delta_vs_reference": {}}
        for value in values:
            g = ind[ind[column] == value]
            out["groups"][value] = ({"n_rows": int(len(g)), **{name: self._rate(g, col) for name, col in col_of.items()}}
                                    if len(g) else {"n_rows": 0, "measurable": False, "note": "unmeasurable: no output"})
        missing = [v for v in values if not out["groups"][v]["n_rows"]]
        if missing:
            out["unmeasurable_groups"] = missing
        for name, col in col_of.items():
            pivot = self._pivot(ind, attr, col).reindex(columns=values)
            deltas = {}
            for value in values:
                if value == reference:
                    continue
                diff = (pivot[value] - pivot[reference]).dropna()
                per_case = diff.groupby(level="case_id").mean().to_numpy(float) if diff.index.nlevels > 1 else diff.to_numpy(float)
                deltas[value] = self._ci_mean(per_case, qid, attr, value, name, "gen_delta")
            out["delta_vs_reference"][name] = deltas
            test = stats.paired_decision_test(pivot.dropna().to_numpy(float), f"{qid}/{attr}/{col.split(':')[0]}")
            if missing:
                test = stats.not_applicable(test.name, test.target, True, test.n, f"unmeasurable value(s) without output: {', '.join(missing)}")
            tests.append(test)
        return out

    # ----- drift -----
    def _drift_frames(self, sub: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
        """(embedding by (case, variant, sample), per-case noise floor)."""
        emb = {(c, v, int(k)): e for c, v, k, e in zip(sub["case_id"], sub["variant"], sub["sample"], sub["embedding"])
               if e is not None}
        floors = []
        for (cid, variant), _ in sub[sub["sample"] == 0].groupby(["case_id", "variant"]):
            floors.append((cid, variant, _cos_distance(emb.get((cid, variant, 0)), emb.get((cid, variant, 1)))))
        floor = pd.DataFrame(floors, columns=["case_id", "variant", "floor"])
        return emb, floor.groupby("case_id")["floor"].mean()

    def _drift_attr(self, s0: pd.DataFrame, emb: dict, floor: pd.Series, attr: str, values: list[str], reference: str,
                    qid: str, tests: list, floor_note: str) -> dict:
        """Per value: per-case drift against the variant with ``attr`` at its reference (others fixed)."""
        attrs = self.card.counterfactual.attributes
        rows = s0.drop_duplicates(["case_id", "variant"])
        per_value: dict[str, dict[str, list[float]]] = {v: {} for v in values if v != reference}
        for r in rows[["case_id", "variant", *self.attrs]].to_dict("records"):
            if attr == INTERSECTION:
                value = r["variant"]
                ref_variant = "|".join(f"{a}={attrs[a].reference}" for a in self.attrs)
            else:
                value = r[attr]
                ref_variant = "|".join(f"{a}={attrs[a].reference if a == attr else r[a]}" for a in self.attrs)
            if value == reference or value not in per_value:
                continue
            d = _cos_distance(emb.get((r["case_id"], r["variant"], 0)), emb.get((r["case_id"], ref_variant, 0)))
            if np.isfinite(d):
                per_value[value].setdefault(r["case_id"], []).append(d)
        out: dict = {"reference": reference, "by_value": {}}
        case_drift: dict[str, list[float]] = {}
        for value, cases in per_value.items():
            per_case = np.array([np.mean(ds) for ds in cases.values()], dtype=float)
            out["by_value"][value] = {"explanation_drift": self._ci_mean(per_case, qid, attr, value, "drift")}
            for cid, ds in cases.items():
                case_drift.setdefault(cid, []).extend(ds)
        cids = sorted(case_drift)
        drift = np.array([np.mean(case_drift[c]) for c in cids], dtype=float)
        fl = np.array([floor.get(c, np.nan) for c in cids], dtype=float)
        out["explanation_drift"] = self._ci_mean(drift, qid, attr, "drift_all")
        out["drift_noise_floor"] = self._ci_mean(fl, qid, attr, "floor")
        both = np.isfinite(drift) & np.isfinite(fl)
        target = f"{qid}/{attr}/drift_excess"
        if not both.any():
            note = floor_note or "no case has both a drift and a noise floor"
            out["drift_excess"] = stats.estimate(float("nan"), None, None, 0, note=f"not measurable: {note}")
            tests.append(stats.not_applicable("wilcoxon", target, True, 0, note))
        else:
            out["drift_excess"] = self._ci_mean(drift[both] - fl[both], qid, attr, "excess")
            tests.append(stats.paired_continuous_test(np.column_stack([drift[both], fl[both]]), target))
        out["n_cases"] = int(len(cids))
        # Per-case drift and floor: the paired differences of two runs (boards.check.versus_reference).
        out["_per_case"] = pd.DataFrame({"explanation_drift": drift, "drift_noise_floor": fl}, index=pd.Index(cids, name="case_id"))
        return out

    def _question_text(self, sub: pd.DataFrame, qid: str, tests: list, warnings: list) -> dict:
        attrs = self.card.counterfactual.attributes
        s0 = sub[sub["sample"] == 0]
        ind = self._indicators(s0)
        out: dict = {"n_rows": int(len(s0)), "n_cases": int(s0["case_id"].nunique()),
                     "n_samples": int(sub["sample"].max()) + 1}
        out["invalid_rate"] = self._rate(ind, "invalid")
        out["refusal_rate"] = self._rate(ind, "refusal")
        out["demographic_mention_rate"] = self._rate(ind, "mention:*")
        out["mention_rate_by_attribute"] = {a: self._rate(ind, f"mention:{a}") for a in self.attrs}
        out["n_without_rationale"] = int((s0["rationale"].fillna("") == "").sum())
        emb, floor = self._drift_frames(sub)
        floor_note = ""
        if out["n_samples"] < 2:
            floor_note = ("one sample per variant (greedy decoding, or the mode's samples: 1), so the noise floor is not measured "
                          "and drift cannot be read; declare samples: 2 in the prompt mode and run with --temperature > 0")
            warnings.append(f"{qid}: {floor_note}")
        elif not len(emb):
            floor_note = "no rationale has an embedding"
        names = list(self.attrs) + ([INTERSECTION] if len(self.attrs) > 1 else [])
        attributes = {}
        for name in names:
            if name == INTERSECTION:
                values = list(dict.fromkeys(s0["variant"]))
                reference = "|".join(f"{a}={attrs[a].reference}" for a in self.attrs)
            else:
                values, reference = attrs[name].values, attrs[name].reference
            my_tests: list = []
            entry = self._indicator_attr(ind, name, values, reference, qid, my_tests)
            entry["drift"] = self._drift_attr(s0, emb, floor, name, values, reference, qid, my_tests, floor_note)
            entry["tests"] = my_tests
            tests.extend(my_tests)
            attributes[name] = entry
        overall = attributes[INTERSECTION if len(self.attrs) > 1 else self.attrs[0]]["drift"]
        for key in ("explanation_drift", "drift_noise_floor", "drift_excess"):
            out[key] = overall[key]
        drift = overall.pop("_per_case")
        for entry in attributes.values():
            entry["drift"].pop("_per_case", None)
        out["attributes"] = attributes
        out["per_case"] = self._per_case(ind, drift)
        return out

    @staticmethod
    def _per_case(ind: pd.DataFrame, drift: pd.DataFrame) -> list[dict]:
        """One record per case (ascending case_id) of the headline quantities: the sample-0 rates over the
        case's variants and the overall drift, floor and excess (None where not measured). With the same
        number of variants per case the headline values are the means of these over cases; another run of
        the same cases pairs with them case by case (boards.check.versus_reference)."""
        rates = ind.groupby("case_id")[["invalid", "refusal", "mention:*"]].mean()
        rates.columns = ["invalid_rate", "refusal_rate", "demographic_mention_rate"]
        table = rates.join(drift, how="left")
        table["drift_excess"] = table["explanation_drift"] - table["drift_noise_floor"]
        table = table.sort_index().astype(float)
        return [{"case_id": str(cid), **{k: stats.num(v) for k, v in rec.items()}}
                for cid, rec in table.to_dict("index").items()]
