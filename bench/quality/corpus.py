"""The quality benchmark's documents, rendered from ``bench.quality.facts``: each fact sits in a paragraph of
filler sentences about the document's subject (numbers, names and years that are not the facts), among more
filler paragraphs, so that a document is several chunks long and a chunk with the right words is not
automatically the right one. Deterministic (a fixed seed per document).

Each question keeps its *gold passage*: the paragraph that holds the fact (a table's header and row, for
tables), which the answer phase gives the model as the ceiling's only source.
"""

from __future__ import annotations

import csv
import io
import random
import re
import textwrap
import unicodedata
from dataclasses import dataclass
from email.message import EmailMessage

from bench.quality.facts import DOCS, QUORRA, QUORRA_ROWS, VANTOR, VANTOR_ROW, ZEMBLA, ZEMBLA_ROWS, Doc, Table

FILLER_EN = (
    "Records from {year} describe {subject} in some detail, though several pages are missing.",
    "{person} noted that {subject} changed little between {year} and {year2}.",
    "A review in {year} suggested a number of small improvements to {subject}.",
    "Most of the questions raised about {subject} concern day-to-day routine rather than policy.",
    "{person} asked for a summary of {subject} to be prepared before the end of the year.",
    "The figures for {year} were broadly in line with the previous period.",
    "Several proposals were considered, and {number} of them were set aside for later discussion.",
    "{person} pointed out that the older documents use different names for the same things.",
    "Visitors often ask about {subject}, and a leaflet answers the most common questions.",
    "A working group of {number} people met twice to look at {subject}.",
    "Nothing in the minutes of {year} suggests any disagreement about {subject}.",
    "The arrangements were revised again in {year}, mostly to simplify the paperwork.",
    "{person} kept a notebook about {subject}, now held with the other papers.",
    "It is worth reading this section together with the notes that follow it.",
    "Some of the early descriptions of {subject} are contradictory and should be read with care.",
    "In {year} a short report compared {subject} with similar cases elsewhere.",
    "The cost of the changes was modest, about {number} hundred in the money of the time.",
    "{person} recommended that the practice be reviewed every {number} years.",
)
FILLER_DE = (
    "Aus dem Jahr {year} sind mehrere Berichte über {subject} erhalten.",
    "Im Jahr {year} wurde {subject} in einer kleinen Ausstellung vorgestellt.",
    "Viele Besucher fragen nach der Geschichte der Stadt und ihrer Handwerker.",
    "Eine Arbeitsgruppe von {number} Personen beschäftigte sich {year} mit der Sammlung.",
    "Die älteren Unterlagen verwenden oft andere Namen für dieselben Dinge.",
    "Zwischen {year} und {year2} änderte sich an der Ausstellung nur wenig.",
    "Ein Faltblatt beantwortet die häufigsten Fragen der Gäste.",
    "Im Jahr {year} wurden {number} neue Vitrinen angeschafft.",
    "Die Räume wurden {year} renoviert, vor allem die Beleuchtung.",
    "Manche frühen Beschreibungen sind widersprüchlich und sollten vorsichtig gelesen werden.",
    "Die Stadt unterstützt das Haus seit vielen Jahren mit kleinen Beträgen.",
    "Führungen für Schulklassen werden nach Absprache angeboten.",
)
PEOPLE_DE = ("die Stadtverwaltung", "ein Heimatforscher", "der Förderverein")
PARAGRAPH_FILLERS = 3  # filler sentences around a fact in its paragraph
FILLER_PARAGRAPHS = 2  # filler paragraphs after each fact's paragraph


@dataclass(frozen=True)
class Question:
    question: str
    document: str
    answers: tuple[str, ...]
    gold: str  # the passage that holds the fact
    language: str = "en"
    page: int | None = None

    def stated_in(self, text: str) -> bool:
        """Whether ``text`` states the fact: holds one of its answers, both normalized."""
        said = normalize(text)
        return any(normalize(a) in said for a in self.answers)

    def answered_by(self, filename: str, text: str) -> bool:
        return filename == self.document and self.stated_in(text)


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes
    language: str


def normalize(text: str) -> str:
    """Case-folded, accents kept, quotes and dashes unified, whitespace collapsed, thousands separators out."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[\u2018\u2019\u201c\u201d\"']", "", text)
    text = re.sub(r"[\u2010-\u2015]", "-", text)
    text = re.sub(r"(?<=\d)[,\u202f\u00a0](?=\d{3}\b)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _filler(doc: Doc, rng: random.Random, count: int) -> list[str]:
    templates, people = (FILLER_DE, PEOPLE_DE) if doc.language == "de" else (FILLER_EN, doc.people or ("the staff",))
    out = []
    for template in rng.sample(templates, count):
        year = rng.randint(1900, 2020)
        sentence = template.format(
            subject=doc.subject,
            person=rng.choice(people),
            year=year,
            year2=year + rng.randint(2, 15),
            number=rng.randint(3, 12),
        )
        out.append(sentence[0].upper() + sentence[1:])
    return out


def _paragraphs(doc: Doc, rng: random.Random) -> list[tuple[str, int | None]]:
    """(paragraph, index of the fact it holds or None), in document order."""
    out: list[tuple[str, int | None]] = []
    for i, fact in enumerate(doc.facts):
        if not fact.sentence:
            continue
        before = _filler(doc, rng, rng.randint(1, PARAGRAPH_FILLERS))
        after = _filler(doc, rng, PARAGRAPH_FILLERS + 1 - len(before))
        out.append((" ".join([*before, fact.sentence, *after]), i))
        for _ in range(FILLER_PARAGRAPHS):
            out.append((" ".join(_filler(doc, rng, 4)), None))
    return out


def _row_text(table: Table, row: int) -> str:
    return "; ".join(f"{c}: {v}" for c, v in zip(table.columns, table.rows[row], strict=True))


def build() -> tuple[list[Document], list[Question]]:
    """Every document, and every question with its gold passage."""
    documents, questions = [], []
    for doc in DOCS:
        rng = random.Random(doc.name)
        paragraphs = _paragraphs(doc, rng)
        gold = {i: text for text, i in paragraphs if i is not None}
        if doc is QUORRA or doc is ZEMBLA:
            assert doc.table is not None
            rows = QUORRA_ROWS if doc is QUORRA else ZEMBLA_ROWS
            gold = {i: _row_text(doc.table, row) for i, row in enumerate(rows)}
        if doc is VANTOR:
            assert doc.table is not None
            gold[3] = _row_text(doc.table, VANTOR_ROW)
        documents.append(Document(doc.name, render(doc, paragraphs), doc.language))
        for i, fact in enumerate(doc.facts):
            questions.append(Question(fact.question, doc.name, fact.answers, gold[i], doc.language, fact.page))
    return documents, questions


def render(doc: Doc, paragraphs: list[tuple[str, int | None]]) -> bytes:
    suffix = doc.name.rsplit(".", 1)[1]
    texts = [p for p, _ in paragraphs]
    if suffix == "txt":
        return "\n\n".join([doc.title, *texts]).encode()
    if suffix == "md":
        sections = [f"## Section {n}\n\n{p}" for n, p in enumerate(texts, start=1)]
        return "\n\n".join([f"# {doc.title}", *sections]).encode()
    if suffix == "html":
        body = "".join(f"<h2>Part {n}</h2><p>{p}</p>" for n, p in enumerate(texts, start=1))
        return f"<html><head><title>{doc.title}</title></head><body><h1>{doc.title}</h1>{body}</body></html>".encode()
    if suffix == "pdf":
        return _pdf(doc, paragraphs)
    if suffix == "csv":
        assert doc.table is not None
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(doc.table.columns)
        writer.writerows(doc.table.rows)
        return out.getvalue().encode()
    if suffix == "xlsx":
        return _xlsx(doc)
    if suffix == "docx":
        return _docx(doc, texts)
    if suffix == "eml":
        message = EmailMessage()
        message["From"] = "Halcyon Appliances <safety@halcyon.example>"
        message["To"] = "customers@halcyon.example"
        message["Subject"] = doc.title
        message["Date"] = "Mon, 01 Sep 2025 09:00:00 +0000"
        message.set_content("\n\n".join(["Dear customer,", *texts, "Halcyon Appliances"]))
        return message.as_bytes()
    raise ValueError(f"no renderer for {doc.name}")


def _pdf(doc: Doc, paragraphs: list[tuple[str, int | None]]) -> bytes:
    """One page per fact (the page its ``Fact.page`` names): its paragraph and the filler after it."""
    from protostar.ingest.parse import text_pdf

    pages: list[list[str]] = []
    for text, fact in paragraphs:
        if fact is not None:
            number = len(pages) + 1
            assert doc.facts[fact].page == number, f"{doc.name}: fact {fact} is on page {number}"
            pages.append([f"{doc.title} - page {number}", ""])
        pages[-1] += [*textwrap.wrap(text, 88), ""]
    return text_pdf(pages, size=11)


def _xlsx(doc: Doc) -> bytes:
    from openpyxl import Workbook

    assert doc.table is not None
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Stock"
    sheet.append(list(doc.table.columns))
    for row in doc.table.rows:
        sheet.append([int(v) if v.isdigit() else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _docx(doc: Doc, texts: list[str]) -> bytes:
    from docx import Document as Docx

    out_doc = Docx()
    out_doc.add_heading(doc.title, level=1)
    for text in texts:
        out_doc.add_paragraph(text)
    if doc.table is not None:
        out_doc.add_heading("Actions", level=2)
        table = out_doc.add_table(rows=1, cols=len(doc.table.columns))
        for cell, name in zip(table.rows[0].cells, doc.table.columns, strict=True):
            cell.text = name
        for row in doc.table.rows:
            for cell, value in zip(table.add_row().cells, row, strict=True):
                cell.text = value
    out = io.BytesIO()
    out_doc.save(out)
    return out.getvalue()
