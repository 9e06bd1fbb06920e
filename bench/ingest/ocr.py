"""Phase 6: OCR pages/s next to text-layer pages/s, through the real API and ONE ingest child, in one run.

The same pages twice: a generated text PDF (``corpus.long_pdf``) and its scan (each page rendered by PDFium at
150 DPI, grey, written back by Pillow as an image-only PDF). They are uploaded in turn, ``rounds`` times, each
time as new bytes; pages / (finished_at - started_at) of each job, and pages / the parse stage alone (where OCR
runs). A scan page skipped by OCR (its result's ``ocr.skipped``) is printed; the rates count every page.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from bench.harness import JobRun, System
from bench.ingest import corpus


@dataclass(frozen=True)
class Pair:
    text: JobRun
    scan: JobRun
    pages: int


def scanned(pdf: bytes, dpi: int = 150) -> bytes:
    import pypdfium2 as pdfium  # type: ignore[import-untyped]

    document = pdfium.PdfDocument(pdf)
    try:
        images = [document[i].render(scale=dpi / 72, grayscale=True).to_pil() for i in range(len(document))]
    finally:
        document.close()
    out = io.BytesIO()
    images[0].save(out, format="PDF", save_all=True, append_images=images[1:], resolution=dpi)
    return out.getvalue()


def run(system: System, key: str, *, pages: int, rounds: int) -> list[Pair]:
    text = corpus.long_pdf(pages)
    scan = scanned(text)
    out = []
    with system.client(key) as api:
        for _ in range(rounds):
            runs = []
            for name, data in (("text.pdf", text), ("scan.pdf", scan)):
                answer, submitted = system.upload(api, name, corpus.unique(data))
                job = system.wait(str(answer["job_id"]), submitted=submitted, api=api)
                if job.job["status"] != "succeeded":
                    raise RuntimeError(f"{name}: the ingest job ended {job.job['status']}: {job.job['error']}")
                result = job.job["result"]
                if name == "scan.pdf" and result.get("ocr", {}).get("pages") != pages:
                    print(f"  the scan was not read whole: {result.get('ocr')}", flush=True)
                runs.append(job)
                print(f"  {name}: {pages} pages; job {job.finished - job.started:.2f} s", flush=True)
            out.append(Pair(runs[0], runs[1], pages))
    return out


def rates(pairs: list[Pair]) -> dict[str, float]:
    pages = sum(p.pages for p in pairs)
    return {
        "text_job": pages / sum(p.text.finished - p.text.started for p in pairs),
        "scan_job": pages / sum(p.scan.finished - p.scan.started for p in pairs),
        "text_parse": pages / sum(p.text.stage_seconds()["parse"] for p in pairs),
        "scan_parse": pages / sum(p.scan.stage_seconds()["parse"] for p in pairs),
    }
