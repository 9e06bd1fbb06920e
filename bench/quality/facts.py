"""The invented facts of the quality benchmark: eleven documents about things that do not exist, each holding six
facts no model can know, with the question that asks for each and the strings an answer must state.

A fact is one sentence of its document (a row, for tables). Documents are rendered by ``bench.quality.corpus``
in the format each one names: plain text, Markdown, HTML, a multi-page PDF, CSV, XLSX, DOCX (with a table),
an e-mail, and a German text asked in German.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    sentence: str  # as the document states it (a table's row is rendered from ``cells``)
    question: str
    answers: tuple[str, ...]  # an answer or a retrieved chunk holding any of these (normalized) states the fact
    page: int | None = None  # PDFs: the page the sentence is on (1-based)


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Doc:
    name: str  # file name, its extension the format
    title: str
    subject: str  # what filler sentences talk about
    people: tuple[str, ...]  # names the filler mentions (not the facts' own answers)
    facts: tuple[Fact, ...]
    table: Table | None = None
    language: str = "en"


KELVARA = Doc(
    "kelvara-valve-works.txt",
    "A short history of Kelvara Valve Works",
    "the valve works",
    ("the works council", "the Ostrevik harbour board", "a local historian"),
    (
        Fact(
            "Kelvara Valve Works was founded in 1931 in the port town of Ostrevik by the engineer Ilse Varrow.",
            "Who founded Kelvara Valve Works?",
            ("Ilse Varrow",),
        ),
        Fact(
            "In 1958 the company moved its foundry to Dunmere, where it employed 340 workers at its peak.",
            "How many workers did Kelvara employ at its Dunmere foundry?",
            ("340",),
        ),
        Fact(
            "The K-12 gate valve, introduced in 1964, was rated for a working pressure of 90 bar.",
            "What working pressure was the Kelvara K-12 gate valve rated for?",
            ("90 bar",),
        ),
        Fact(
            "Kelvara's longest-serving director, Anselm Brody, led the firm for 27 years.",
            "For how many years did Anselm Brody lead Kelvara?",
            ("27",),
        ),
        Fact(
            "In 1989 Kelvara was bought by the Halloran Group for 41 million pounds.",
            "Which company bought Kelvara in 1989?",
            ("Halloran",),
        ),
        Fact(
            "The company archive, with drawings of every valve since 1931, is kept at the Ostrevik Maritime Library.",
            "Where is the Kelvara company archive kept?",
            ("Maritime Library",),
        ),
    ),
)

ORBISK = Doc(
    "orbisk-handbook.md",
    "Orbisk employee handbook",
    "working at Orbisk",
    ("your team lead", "the people team", "the office manager"),
    (
        Fact(
            "Every employee at Orbisk receives 28 days of paid leave per calendar year.",
            "How many days of paid leave do Orbisk employees get per year?",
            ("28",),
        ),
        Fact(
            "Expense claims must be filed in the finance portal within 45 days of the purchase.",
            "Within how many days of a purchase must an Orbisk expense claim be filed?",
            ("45",),
        ),
        Fact(
            "The security desk can be reached day and night on extension 4471.",
            "Which phone extension reaches the Orbisk security desk?",
            ("4471",),
        ),
        Fact(
            "Employees who work from home receive a remote-work stipend of 65 euros a month.",
            "How much is the Orbisk remote-work stipend per month?",
            ("65",),
        ),
        Fact(
            "New joiners are paired with a senior colleague through our mentorship programme, called Lantern.",
            "What is the name of the Orbisk mentorship programme?",
            ("Lantern",),
        ),
        Fact(
            "Parking permits are issued by Greta Holm in the facilities team.",
            "Who issues parking permits at Orbisk?",
            ("Greta Holm",),
        ),
    ),
)

MERIDEL = Doc(
    "meridel-observatory.html",
    "The Meridel Observatory",
    "the observatory",
    ("the visiting astronomers", "the night staff", "the friends' association"),
    (
        Fact(
            "The Meridel Observatory stands at an altitude of 2,417 metres on the summit of Mount Castellane.",
            "At what altitude does the Meridel Observatory stand?",
            ("2,417", "2417"),
        ),
        Fact(
            "Its main telescope, the Harrow Reflector, has a mirror 3.6 metres across.",
            "What is the name of the Meridel Observatory's main telescope?",
            ("Harrow Reflector",),
        ),
        Fact(
            "In 2003 the observatory's staff discovered the comet now called Meridel-Vance.",
            "Which comet did the Meridel Observatory discover in 2003?",
            ("Meridel-Vance", "Meridel Vance"),
        ),
        Fact(
            "Guided public tours of the domes run every Thursday at eight in the evening.",
            "On which day of the week does the Meridel Observatory run public tours?",
            ("Thursday",),
        ),
        Fact(
            "The observatory has been directed since 2016 by the astrophysicist Colm Ashby.",
            "Who is the director of the Meridel Observatory?",
            ("Colm Ashby",),
        ),
        Fact(
            "The nearest town, Vessaline, is 19 kilometres away by the mountain road.",
            "How far is the town of Vessaline from the Meridel Observatory?",
            ("19 kilometres", "19 km"),
        ),
    ),
)

TESSALY = Doc(
    "tessaly-freight-annual-report.pdf",
    "Tessaly Freight annual report 2024",
    "the freight business",
    ("the audit committee", "the regional managers", "our shareholders"),
    (
        Fact(
            "Tessaly Freight reported revenue of 182.4 million dollars for the fiscal year 2024.",
            "What revenue did Tessaly Freight report for fiscal 2024?",
            ("182.4",),
            page=1,
        ),
        Fact(
            "The fleet grew to 56 cargo aircraft, the newest an A330 freighter named Skylark.",
            "How many cargo aircraft does the Tessaly Freight fleet have?",
            ("56",),
            page=2,
        ),
        Fact(
            "Chief executive Marguerite Olin announced a new sorting hub in Port Calder.",
            "Where will Tessaly Freight open its new sorting hub?",
            ("Port Calder",),
            page=3,
        ),
        Fact(
            "On-time delivery reached 96.2 percent of all shipments over the year.",
            "What on-time delivery rate did Tessaly Freight reach?",
            ("96.2",),
            page=4,
        ),
        Fact(
            "Tessaly signed a ten-year transport contract with Brightwater Pharma in March.",
            "With which company did Tessaly sign a ten-year transport contract?",
            ("Brightwater",),
            page=5,
        ),
        Fact(
            "The board approved a dividend of 1.15 dollars per share.",
            "What dividend per share did the Tessaly board approve?",
            ("1.15",),
            page=6,
        ),
    ),
)

QUORRA = Doc(
    "quorra-ferry-timetable.csv",
    "Quorra ferry timetable",
    "the ferries",
    (),
    (
        Fact("", "What is the fare of the ferry from Quorra to Lindholm?", ("14.50",)),
        Fact("", "Which vessel sails from Quorra to Brask?", ("Marit Ostra",)),
        Fact("", "At what time does the ferry from Tarn Bay to Quorra depart?", ("16:20",)),
        Fact("", "How many minutes does the crossing from Quorra to Selk Island take?", ("95",)),
        Fact("", "What is the fare of the ferry from Lindholm to Tarn Bay?", ("22.00",)),
        Fact("", "Which vessel runs the ferry from Brask to Selk Island?", ("Halden Star",)),
    ),
    table=Table(
        ("route", "departs", "duration_min", "fare_eur", "vessel"),
        (
            ("Quorra to Lindholm", "07:40", "50", "14.50", "Sunnvik"),
            ("Lindholm to Quorra", "09:10", "50", "14.50", "Sunnvik"),
            ("Quorra to Brask", "08:15", "70", "18.00", "Marit Ostra"),
            ("Brask to Quorra", "11:30", "70", "18.00", "Marit Ostra"),
            ("Quorra to Selk Island", "10:05", "95", "26.50", "Grelle"),
            ("Selk Island to Quorra", "13:45", "95", "26.50", "Grelle"),
            ("Tarn Bay to Quorra", "16:20", "40", "11.00", "Pellam"),
            ("Quorra to Tarn Bay", "17:35", "40", "11.00", "Pellam"),
            ("Lindholm to Tarn Bay", "12:50", "85", "22.00", "Vardo Rose"),
            ("Tarn Bay to Lindholm", "15:05", "85", "22.00", "Vardo Rose"),
            ("Brask to Selk Island", "14:10", "60", "16.50", "Halden Star"),
            ("Selk Island to Brask", "18:25", "60", "16.50", "Halden Star"),
        ),
    ),
)
# The table facts, in QUORRA.facts' order: the row that holds each.
QUORRA_ROWS = (0, 2, 6, 4, 8, 10)

ZEMBLA = Doc(
    "zembla-stock.xlsx",
    "Zembla Joinery stock list",
    "the stock",
    (),
    (
        Fact("", "How many copper gaskets does Zembla Joinery have in stock?", ("1240", "1,240")),
        Fact("", "Which supplier provides Zembla's brass hinges?", ("Ferrol Metals",)),
        Fact("", "In which warehouse does Zembla keep its oak panels?", ("Yarrow",)),
        Fact("", "What is the item code of Zembla's steel bracket?", ("ZB-2093",)),
        Fact("", "Who supplies Zembla's glass insulators?", ("Candor Glassworks",)),
        Fact("", "How many walnut dowels does Zembla Joinery have in stock?", ("5310", "5,310")),
    ),
    table=Table(
        ("item code", "item", "warehouse", "quantity", "supplier"),
        (
            ("ZB-1001", "copper gasket", "Kettering Road", "1240", "Arlo Supply"),
            ("ZB-1187", "brass hinge", "Kettering Road", "860", "Ferrol Metals"),
            ("ZB-1420", "oak panel", "Yarrow", "312", "Bellweather Timber"),
            ("ZB-2093", "steel bracket", "Yarrow", "2275", "Dunrow Steel"),
            ("ZB-2310", "glass insulator", "Mill Lane", "148", "Candor Glassworks"),
            ("ZB-2544", "walnut dowel", "Mill Lane", "5310", "Bellweather Timber"),
            ("ZB-3002", "pine board", "Kettering Road", "940", "Bellweather Timber"),
            ("ZB-3117", "zinc screw", "Mill Lane", "18800", "Dunrow Steel"),
            ("ZB-3390", "felt pad", "Yarrow", "4100", "Arlo Supply"),
            ("ZB-3482", "cabinet lock", "Kettering Road", "295", "Ferrol Metals"),
        ),
    ),
)
ZEMBLA_ROWS = (0, 1, 2, 3, 4, 5)

VANTOR = Doc(
    "vantor-council-minutes.docx",
    "Vantor parish council: minutes of the February meeting",
    "the council's business",
    ("the clerk", "a resident", "the treasurer"),
    (
        Fact(
            "The meeting was chaired by councillor Rosalind Teague.",
            "Who chaired the February meeting of the Vantor parish council?",
            ("Rosalind Teague",),
        ),
        Fact(
            "The council approved a budget of 75,000 euros for the survey of the river Alde.",
            "What budget did the Vantor council approve for the river survey?",
            ("75,000", "75000"),
        ),
        Fact(
            "The next meeting will be held on 14 March in the village hall.",
            "When is the next meeting of the Vantor parish council?",
            ("14 March", "March 14"),
        ),
        Fact(
            "",
            "Who will draft the tender for the Hollin footbridge?",
            ("Piet Lomax",),
        ),
        Fact(
            "The river survey will be carried out by the firm Aldane Surveys.",
            "Which firm will carry out the Vantor river survey?",
            ("Aldane",),
        ),
        Fact(
            "Eleven members of the council were present.",
            "How many council members attended the February meeting in Vantor?",
            ("Eleven", "11"),
        ),
    ),
    table=Table(
        ("action", "owner", "due"),
        (
            ("Draft the tender for the Hollin footbridge", "Piet Lomax", "30 April"),
            ("Write to the county about the bus shelter", "Ada Quarrie", "1 March"),
            ("Order new benches for the green", "Rhodri Penn", "15 March"),
            ("Publish the survey brief", "Ada Quarrie", "20 March"),
        ),
    ),
)
VANTOR_ROW = 0  # the action-table row of the fourth fact

BRENNIK = Doc(
    "brennik-museum.txt",
    "Das Brennik-Museum in Falkenrode",
    "das Museum",
    (),
    (
        Fact(
            "Das Brennik-Museum wurde im Jahr 1907 von der Weberin Hedda Sommerlatt gegründet.",
            "Wer gründete das Brennik-Museum?",
            ("Hedda Sommerlatt",),
        ),
        Fact(
            "Die Sammlung des Museums umfasst heute 4.300 historische Stoffmuster.",
            "Wie viele historische Stoffmuster umfasst die Sammlung des Brennik-Museums?",
            ("4.300", "4300", "4,300"),
        ),
        Fact(
            "Das Museum liegt in der Altstadt von Falkenrode, direkt am Fluss Ilme.",
            "An welchem Fluss liegt das Brennik-Museum?",
            ("Ilme",),
        ),
        Fact(
            "Der Eintritt für Erwachsene kostet 7 Euro, Kinder haben freien Eintritt.",
            "Wie viel kostet der Eintritt ins Brennik-Museum für Erwachsene?",
            ("7 Euro", "7 euro", "7 €"),
        ),
        Fact(
            "Am Montag bleibt das Museum geschlossen.",
            "An welchem Wochentag ist das Brennik-Museum geschlossen?",
            ("Montag", "Monday"),
        ),
        Fact(
            "Das berühmteste Stück der Sammlung ist der Wandteppich Die Nordfahrt aus dem Jahr 1652.",
            "Wie heißt das berühmteste Stück der Sammlung des Brennik-Museums?",
            ("Nordfahrt",),
        ),
    ),
    language="de",
)

HALCYON = Doc(
    "halcyon-kettle-recall.eml",
    "Product recall: Halcyon kettles",
    "the recall",
    ("our customer service team", "the retailers", "the safety regulator"),
    (
        Fact(
            "The recall covers the Halcyon BX-7 electric kettle sold between May and August 2025.",
            "Which Halcyon kettle model is being recalled?",
            ("BX-7",),
        ),
        Fact(
            "Customers should call 0800 555 0199 to arrange a free replacement.",
            "Which phone number should customers call about the Halcyon kettle recall?",
            ("0800 555 0199",),
        ),
        Fact(
            "The fault is a cracked thermostat housing that can let steam reach the switch.",
            "What fault led to the Halcyon kettle recall?",
            ("thermostat",),
        ),
        Fact(
            "About 18,000 kettles are affected in total.",
            "How many Halcyon kettles are affected by the recall?",
            ("18,000", "18000"),
        ),
        Fact(
            "The recall is managed by Halcyon's quality lead, Noor Effendi.",
            "Who manages the Halcyon kettle recall?",
            ("Noor Effendi",),
        ),
        Fact(
            "Replacement kettles are shipped within 10 working days of the call.",
            "Within how many working days are replacement Halcyon kettles shipped?",
            ("10",),
        ),
    ),
)

FENNICK = Doc(
    "fennick-orchard.html",
    "Fennick Orchard",
    "the orchard",
    ("the pickers", "our neighbours", "the cider makers"),
    (
        Fact(
            "Fennick Orchard grows 23 varieties of apple on its slopes.",
            "How many apple varieties does Fennick Orchard grow?",
            ("23",),
        ),
        Fact(
            "Its oldest tree, planted in 1872, is a Redwick Pippin that still bears fruit.",
            "Which apple variety is the oldest tree at Fennick Orchard?",
            ("Redwick Pippin",),
        ),
        Fact(
            "The timber cider press in the barn was built by the Loam brothers.",
            "Who built the cider press at Fennick Orchard?",
            ("Loam",),
        ),
        Fact(
            "The harvest festival is held on the second Saturday of October.",
            "When is the harvest festival at Fennick Orchard held?",
            ("second Saturday of October",),
        ),
        Fact(
            "The orchard covers 41 hectares of the valley.",
            "How large is Fennick Orchard?",
            ("41 hectares",),
        ),
        Fact(
            "The head grower, Wynn Tallis, has worked the orchard since 1994.",
            "Who is the head grower at Fennick Orchard?",
            ("Wynn Tallis",),
        ),
    ),
)

GRISBY = Doc(
    "grisby-lab-safety.docx",
    "Grisby Laboratory safety protocol",
    "laboratory safety",
    ("the lab manager", "every researcher", "the cleaning staff"),
    (
        Fact(
            "Solvent waste is collected from every laboratory each Tuesday morning.",
            "On which day is solvent waste collected at the Grisby Laboratory?",
            ("Tuesday",),
        ),
        Fact(
            "The fume hoods are certified once a year by the contractor Corran Air.",
            "Which contractor certifies the fume hoods of the Grisby Laboratory?",
            ("Corran Air",),
        ),
        Fact(
            "The emergency shower is tested every 14 days and the test is logged.",
            "How often is the emergency shower at the Grisby Laboratory tested?",
            ("14 days",),
        ),
        Fact(
            "The laboratory's biosafety officer is Dr. Imre Kasza.",
            "Who is the biosafety officer of the Grisby Laboratory?",
            ("Imre Kasza",),
        ),
        Fact(
            "Liquid nitrogen may only be dispensed in room B-117.",
            "In which room may liquid nitrogen be dispensed at the Grisby Laboratory?",
            ("B-117",),
        ),
        Fact(
            "Lasers of class 3B and above need the written approval of Professor Lotte Varga.",
            "Whose written approval do class 3B lasers need at the Grisby Laboratory?",
            ("Lotte Varga",),
        ),
    ),
)

DOCS = (KELVARA, ORBISK, MERIDEL, TESSALY, QUORRA, ZEMBLA, VANTOR, BRENNIK, HALCYON, FENNICK, GRISBY)
