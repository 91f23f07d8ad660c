"""The imaging kind: images with labels and demographics -> requests that carry the image as a
content part (``predict`` for classifiers and CLIP; one ``choice``/``generate`` question per label
for VLMs) -> per-image probabilities -> thresholds frozen on validation -> the card's audits
(group by default) on the test split. Backends that train fit on the train split first."""

from __future__ import annotations

from ...data.image.budget import subsample
from ...data.image.dataset import ImagingDataset, limit_dataset, load_dataset
from ...errors import FairbenchError
from ...hashing import sha256_files
from ...requests import ImagePart, Request
from ..base import Kind, Prepared
from .answers import questions
from .evaluate import evaluate, image_rows

CHUNK = 256  # requests per cache transaction: predictions are cheap per image
ATTRIBUTES = ("sex", "age_group", "race")


def _num(x):
    return None if x != x else float(x)  # NaN -> None (JSON has no NaN)


class ImageKind(Kind):
    name = "imaging"
    provides = ("instances",)
    default_audits = ("group",)

    def check_backend(self, backend_cls, model_spec) -> None:
        if not backend_cls.accepts_images:
            raise FairbenchError(
                f'task {self.card.name} is an imaging task but model "{model_spec.name}" uses the text backend '
                f'"{model_spec.backend}". Use a classifier, clip, vlm or openai (served VLM) model (fairbench list models).'
            )
        if self.card.input_modality == "signal" and not getattr(backend_cls, "accepts_signals", False):
            raise FairbenchError(
                f'task {self.card.name} feeds a {self.card.signal.channels}-channel waveform (input_modality: signal), which '
                f'the {model_spec.backend} backend of model "{model_spec.name}" cannot read. Use a classifier model (a PatchTST backbone).'
            )

    def prepare(self, spec, model_spec, models, backend_cls) -> Prepared:
        card = self.card
        ds = load_dataset(card, spec.data_dir)
        n_available = len(ds)
        ds = limit_dataset(ds, spec.limit)
        if getattr(spec, "sample", None) is not None:
            raise FairbenchError(f"task {card.name}: --sample is for text tasks; imaging tasks take --limit.")
        train, val = ds.split("train"), ds.split("val")
        budget = None
        fraction = getattr(spec, "label_fraction", None)
        if fraction is not None:
            if not backend_cls.trains:
                raise FairbenchError(
                    f'--label-fraction subsamples the train split that a model is trained on; model "{model_spec.name}" '
                    f"(backend {model_spec.backend}) is not trained by the run. Use a classifier or mitigated-classifier model, "
                    "or drop --label-fraction."
                )
            train, budget = subsample(train, card, fraction, spec.seed)  # val and test stay whole
        frame = ds.frame[ds.frame["split"].isin(["val", "test"])].reset_index(drop=True)
        evaluated = ImagingDataset(frame, ds.label_type, ds.labels, ds.reader, ds.report, ds.files)
        card_hash = sha256_files([card.directory / "task.yaml"])["task.yaml"]
        predict = "predict" in backend_cls.methods
        requests = self._requests(evaluated, card_hash, predict, spec.seed)
        run_info = {"prompt_mode": "image", "n_cases": len(ds), "n_cases_available": n_available}
        data_report = {"quirks": sorted(set(ds.report.quirks)), "skipped": ds.report.skipped}
        n_images = {s: int((ds.frame["split"] == s).sum()) for s in ("train", "val", "test")}
        manifest_data = {"n_images": n_images}
        if budget is not None:  # only then: a full-data run's results and manifest are unchanged
            run_info["label_budget"] = budget
            manifest_data["label_budget"] = budget
        fit_identity = [*train.frame["id"], "|val|", *val.frame["id"]]
        # The (subsampled) train ids are in fit_identity, so the request keys and the trained model's
        # identity differ between fractions: a fraction-0.25 run never reuses a fraction-1.0 row.
        return Prepared(requests, "image", run_info, list(ds.files), data_report, manifest_data,
                        fit_data=(train, val), fit_identity=fit_identity, chunk=CHUNK)

    def _requests(self, ds: ImagingDataset, card_hash: str, predict: bool, seed: int) -> list[Request]:
        """One ``predict`` request per image, or one question per (image, label) for a VLM."""
        card = self.card
        targets = ds.targets()
        asked = [("", "")] if predict else questions(card)
        vlm = card.vlm
        out = []
        for n, (_, r) in enumerate(ds.frame.iterrows()):
            t = targets[n]
            meta = {"split": r["split"], "patient_id": r["patient_id"], "age": _num(r["age"]),
                    "targets": int(t) if ds.label_type == "multiclass" else [_num(x) for x in t]}
            attributes = {a: r[a] for a in ATTRIBUTES}
            image = ImagePart(f"{card_hash[:16]}|{r['split']}|{r['id']}", lambda i=n: ds.read(i))
            for label, question in asked:
                if predict:
                    out.append(Request(r["id"], "", attributes, "", list(card.labels), "predict", seed=seed, meta=meta, images=(image,)))
                else:
                    out.append(Request(r["id"], label, attributes, question, list(vlm.options), vlm.method,
                                       max_new_tokens=vlm.max_new_tokens, seed=seed, meta=meta, images=(image,)))
        return out

    def rows(self, requests, keys, cached) -> list[dict]:
        out = []
        for index, (req, key) in enumerate(zip(requests, keys)):
            m = req.meta
            row = {"index": index, "key": key, "id": req.case_id, "patient_id": m["patient_id"], "split": m["split"],
                   **req.attributes, "age": m["age"], "targets": m["targets"], "method": req.method}
            if req.method != "predict":
                row.update({"question_id": req.question_id, "prompt": req.prompt, "options": req.options})
            out.append({**row, **cached[key]})
        return out

    def evaluate(self, rows, seed, run_info, data_report):
        return evaluate(self, rows, seed, run_info, data_report)


def predict_images(backend, ds: ImagingDataset) -> list[dict]:
    """Per-image rows (``probs``, ``valid``; for VLMs also ``vlm_answers``, ``answers_read`` and
    ``raw_output``) of ``backend`` on every image of ``ds``, through exactly the requests a run sends.
    For notebooks and tests; ``fairbench run`` caches and stores the same requests."""
    kind = ImageKind(backend.card)
    requests = kind._requests(ds, "adhoc", "predict" in backend.methods, backend.seed)
    keys = [str(i) for i in range(len(requests))]
    cached: dict[str, dict] = {}
    for method in dict.fromkeys(r.method for r in requests):
        idx = [i for i, r in enumerate(requests) if r.method == method]
        for i, res in zip(idx, backend.answer(method, [requests[i] for i in idx])):
            cached[keys[i]] = res.as_dict()
    return image_rows(kind.rows(requests, keys, cached), kind.card)
