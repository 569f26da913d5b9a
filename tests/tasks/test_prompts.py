"""Snapshot of every task's rendering: fixed rows in the Hugging Face schema -> exact strings.

Rows are copied from the local mirror (long passages shortened by hand) or written in the hub
schema where the mirror has none (DROP). Expected strings follow ../shared/TARGETS.md, with the
details MeZO's templates.py / encode_prompt and LM-BFF's templates decide (see tasks/*.yaml).
"""

import pytest

from tests.tasks import PAPER_TASKS
from zobench.tasks import Rendered, available_tasks, load_task

CASES = [
    # (task, family, row, expected Rendered)
    (
        "sst2",
        "causal",
        {"sentence": "it 's a charming and often affecting journey . ", "label": 1, "idx": 0},
        Rendered("it 's a charming and often affecting journey . It was", (" terrible", " great"), 1),
    ),
    (
        "sst2",
        "masked",
        {"sentence": "it 's a charming and often affecting journey . ", "label": 1, "idx": 0},
        Rendered("it 's a charming and often affecting journey . It was <mask>.", ("terrible", "great"), 1),
    ),
    (
        "rte",
        "causal",
        {
            "premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
            "hypothesis": "Weapons of Mass Destruction Found in Iraq.",
            "idx": 0,
            "label": 1,
        },
        Rendered(
            'No Weapons of Mass Destruction Found in Iraq Yet.\nDoes this mean that "Weapons of Mass '
            'Destruction Found in Iraq." is true? Yes or No?\n',
            ("Yes", "No"),
            1,
        ),
    ),
    (
        "rte",
        "masked",  # LM-BFF: premise minus its last character, "?", mask, ",", lower-cased hypothesis
        {
            "premise": "Reagan was seriously wounded by a bullet fired by John Hinckley Jr. in an attempted "
            "assassination, but made a remarkably speedy recovery.",
            "hypothesis": "Reagan survived an attempted assassin's bullets.",
            "idx": 659,
            "label": 0,
        },
        Rendered(
            "Reagan was seriously wounded by a bullet fired by John Hinckley Jr. in an attempted "
            "assassination, but made a remarkably speedy recovery? <mask>, reagan survived an attempted "
            "assassin's bullets.",
            ("Yes", "No"),
            0,
        ),
    ),
    (
        "sst5",
        "masked",
        {"text": "no movement , no yuks , not much of anything .", "label": 1, "label_text": "negative"},
        Rendered(
            "no movement , no yuks , not much of anything . It was <mask>.",
            ("terrible", "bad", "okay", "good", "great"),
            1,
        ),
    ),
    (
        "snli",
        "masked",
        {
            "premise": "This church choir sings to the masses as they sing joyous songs from the book at a church.",
            "hypothesis": "The church has cracks in the ceiling.",
            "label": 1,
        },
        Rendered(
            "This church choir sings to the masses as they sing joyous songs from the book at a church? "
            "<mask>, the church has cracks in the ceiling.",
            ("Yes", "Maybe", "No"),
            1,
        ),
    ),
    (
        "mnli",
        "masked",
        {
            "premise": "Price caps may sound more attractive with every passing rate case.",
            "hypothesis": "Rate cases make price caps sound more attractive.",
            "label": 2,
            "idx": 10627,
        },
        Rendered(
            "Price caps may sound more attractive with every passing rate case? <mask>, rate cases make "
            "price caps sound more attractive.",
            ("Yes", "Maybe", "No"),
            2,
        ),
    ),
    (
        "trec",
        "masked",
        {"text": "How far is it from Denver to Aspen ?", "coarse_label": 5, "fine_label": 40},
        Rendered(
            "<mask>: How far is it from Denver to Aspen ?",
            ("Expression", "Entity", "Description", "Human", "Location", "Number"),
            5,
        ),
    ),
    # zobench's own causal prompts for the LM-BFF-only tasks (tasks/<name>.yaml says why)
    (
        "sst5",
        "causal",
        {"text": "no movement , no yuks , not much of anything .", "label": 1, "label_text": "negative"},
        Rendered(
            "no movement , no yuks , not much of anything . It was",
            (" terrible", " bad", " okay", " good", " great"),
            1,
        ),
    ),
    (
        "snli",
        "causal",
        {"premise": "A man sleeps.", "hypothesis": "A person rests.", "label": 0},
        Rendered(
            'Suppose A man sleeps. Can we infer that "A person rests."? Yes, No, or Maybe?\n', ("Yes", "Maybe", "No"), 0
        ),
    ),
    (
        "mnli",
        "causal",
        {
            "premise": "Price caps may sound more attractive with every passing rate case.",
            "hypothesis": "Rate cases make price caps sound more attractive.",
            "label": 2,
            "idx": 10627,
        },
        Rendered(
            "Suppose Price caps may sound more attractive with every passing rate case. Can we infer that "
            '"Rate cases make price caps sound more attractive."? Yes, No, or Maybe?\n',
            ("Yes", "Maybe", "No"),
            2,
        ),
    ),
    (
        "trec",
        "causal",
        {"text": "How far is it from Denver to Aspen ?", "coarse_label": 5, "fine_label": 40},
        Rendered(
            "Question: How far is it from Denver to Aspen ?\nType:",
            (" Expression", " Entity", " Description", " Human", " Location", " Number"),
            5,
        ),
    ),
    (
        "cb",
        "causal",
        {
            "premise": "Valence the void-brain, Valence the virtuous valet. Did he think he was helping?",
            "hypothesis": "Valence was helping",
            "idx": 0,
            "label": 1,
        },
        Rendered(
            "Suppose Valence the void-brain, Valence the virtuous valet. Did he think he was helping? Can we "
            'infer that "Valence was helping"? Yes, No, or Maybe?\n',
            ("Yes", "No", "Maybe"),
            1,
        ),
    ),
    (
        "boolq",
        "causal",  # question capitalised, "?" appended
        {
            "question": "is pain experienced in a missing body part or paralyzed area",
            "passage": "Phantom pain -- Phantom pain sensations are described as perceptions.",
            "idx": 2,
            "label": 1,
        },
        Rendered(
            "Phantom pain -- Phantom pain sensations are described as perceptions. Is pain experienced in a "
            "missing body part or paralyzed area?\n",
            ("No", "Yes"),
            1,
        ),
    ),
    (
        "boolq",
        "causal",  # a question that already ends in "?" gets none added
        {"question": "can you see it?", "passage": "P.", "idx": 3, "label": 0},
        Rendered("P. Can you see it?\n", ("No", "Yes"), 0),
    ),
    (
        "wsc",
        "causal",  # span2 lower-cased
        {
            "text": "The large ball crashed right through the table because it was made of styrofoam.",
            "span1_index": 6,
            "span2_index": 9,
            "span1_text": "the table",
            "span2_text": "It",
            "idx": 5,
            "label": 1,
        },
        Rendered(
            "The large ball crashed right through the table because it was made of styrofoam.\nIn the previous "
            'sentence, does the pronoun "it" refer to the table? Yes or No?\n',
            ("No", "Yes"),
            1,
        ),
    ),
    (
        "wic",
        "causal",
        {
            "word": "class",
            "sentence1": "An emerging professional class.",
            "sentence2": "Apologizing for losing your temper showed real class.",
            "start1": 25,
            "start2": 47,
            "end1": 30,
            "end2": 52,
            "idx": 0,
            "label": 0,
        },
        Rendered(
            'Does the word "class" have the same meaning in these two sentences? Yes, No?\nAn emerging '
            "professional class.\nApologizing for losing your temper showed real class.\n",
            ("No", "Yes"),
            0,
        ),
    ),
    (
        "multirc",
        "causal",  # the paragraph's leading space goes (MeZO's encode_prompt strips it)
        {
            "paragraph": " What causes a change in motion? The application of a force. ",
            "question": "What causes motion?",
            "answer": "A force",
            "idx": {"paragraph": 0, "question": 0, "answer": 1},
            "label": 1,
        },
        Rendered(
            "What causes a change in motion? The application of a force. \nQuestion: What causes motion?\n"
            'I found this answer "A force". Is that correct? Yes or No?\n',
            ("No", "Yes"),
            1,
        ),
    ),
    (
        "copa",
        "causal",  # effect -> " so", first word lower-cased, the space starts the candidate
        {
            "premise": "The man turned on the faucet.",
            "choice1": "The toilet filled with water.",
            "choice2": "Water flowed from the spout.",
            "question": "effect",
            "idx": 0,
            "label": 1,
        },
        Rendered(
            "The man turned on the faucet so", (" the toilet filled with water.", " water flowed from the spout."), 1
        ),
    ),
    (
        "copa",
        "causal",  # cause -> " because"; "I" keeps its capital
        {
            "premise": "My body cast a shadow over the grass.",
            "choice1": "I stood in the sun.",
            "choice2": "The grass was cut.",
            "question": "cause",
            "idx": 7,
            "label": 0,
        },
        Rendered("My body cast a shadow over the grass because", (" I stood in the sun.", " the grass was cut."), 0),
    ),
    (
        "record",
        "causal",  # @highlight -> "- "; context ends at "\n-"; every answer is gold, the first is trained
        {
            "passage": "Chelsea beat Olimpija 2-1.\n@highlight\nCosta scored\n@highlight\nZouma won it",
            "query": "Mourinho said @placeholder made it difficult.",
            "entities": ["Chelsea", "Olimpija", "Costa", "Zouma"],
            "entity_spans": {
                "text": ["Chelsea", "Olimpija", "Costa", "Zouma"],
                "start": [0, 13, 0, 0],
                "end": [7, 21, 5, 5],
            },
            "answers": ["Olimpija", "Chelsea"],
            "idx": {"passage": 0, "query": 0},
        },
        Rendered(
            "Chelsea beat Olimpija 2-1.\n- Costa scored\n- Zouma won it\n-",
            (
                " Mourinho said Chelsea made it difficult.",
                " Mourinho said Olimpija made it difficult.",
                " Mourinho said Costa made it difficult.",
                " Mourinho said Zouma made it difficult.",
            ),
            1,
            gold=(1, 0),
        ),
    ),
    (
        "squad",
        "causal",  # target: first answer + "\n" (MeZO's verbalize); question stripped
        {
            "id": "56be4db0acb8001400a502ec",
            "title": "Super_Bowl_50",
            "context": "The AFC champion Denver Broncos defeated the NFC champion Carolina Panthers 24–10.",
            "question": "Which NFL team represented the AFC at Super Bowl 50? ",
            "answers": {"text": ["Denver Broncos", "The Denver Broncos"], "answer_start": [17, 13]},
        },
        Rendered(
            "Title: Super_Bowl_50\nContext: The AFC champion Denver Broncos defeated the NFC champion Carolina "
            "Panthers 24–10.\nQuestion: Which NFL team represented the AFC at Super Bowl 50?\nAnswer:",
            (" Denver Broncos\n",),
            0,
            answers=("Denver Broncos", "The Denver Broncos"),
        ),
    ),
    (
        "drop",
        "causal",  # hub schema of `drop` (ucinlp/drop)
        {
            "section_id": "nfl_1184",
            "query_id": "f37e81fa-ef7b-4583-b671-762fc433faa9",
            "passage": "Hoping to rebound, the Raiders flew to Oakland. "
            "The Chiefs scored first with a 21-yard field goal.",
            "question": "Who scored the first points of the game?",
            "answers_spans": {"spans": ["Chiefs", "the Chiefs"], "types": ["span", "span"]},
        },
        Rendered(
            "Passage: Hoping to rebound, the Raiders flew to Oakland. The Chiefs scored first with a 21-yard "
            "field goal.\nQuestion: Who scored the first points of the game?\nAnswer:",
            (" Chiefs\n",),
            0,
            answers=("Chiefs", "the Chiefs"),
        ),
    ),
]


@pytest.mark.parametrize("task, family, row, expected", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_rendering_snapshot(task, family, row, expected):
    assert load_task(task).render(row, family) == expected


def test_every_task_and_family_has_a_snapshot():
    covered = {(task, family) for task, family, _, _ in CASES}
    wanted = {(name, family) for name in available_tasks() for family in load_task(name).families}
    assert wanted <= covered, sorted(wanted - covered)


def test_the_paper_tasks_have_the_papers_families():
    families = {name: load_task(name).families for name in PAPER_TASKS}
    assert families == {
        # sst5 / snli / mnli / trec: LM-BFF masked prompts, plus zobench's own causal ones
        **{name: ("causal", "masked") for name in ("sst2", "rte", "sst5", "snli", "mnli", "trec")},
        **{name: ("causal",) for name in ("cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop")},
    }


def test_objectives_and_metrics_are_the_papers():
    """MeZO's mezo.sh trains COPA/ReCoRD/SQuAD/DROP without --train_as_classification; SQuAD/DROP by F1."""
    got = {name: (load_task(name).objective, load_task(name).metric) for name in PAPER_TASKS}
    special = {
        "copa": ("lm", "accuracy"),
        "record": ("lm", "accuracy"),
        "squad": ("generation", "f1"),
        "drop": ("generation", "f1"),
    }
    assert got == {name: special.get(name, ("classification", "accuracy")) for name in PAPER_TASKS}
    assert load_task("squad").generation == {"max_new_tokens": 50, "stop": ["\n"]}


def _row(task):
    return next(row for name, _, row, _ in CASES if name == task)


def test_asking_for_a_family_the_task_lacks_is_refused():
    with pytest.raises(ValueError, match=r"task wsc: no 'masked' prompt; this task has causal"):
        load_task("wsc").render(_row("wsc"), "masked")


def test_copa_with_an_unknown_question_type_is_refused():
    row = {**_row("copa"), "question": "purpose"}
    with pytest.raises(ValueError, match=r"task copa \(causal prompt\): example does not fit .*purpose"):
        load_task("copa").render(row)


def test_record_answer_missing_from_the_entities_is_refused():
    row = {**_row("record"), "answers": ["Drogba"]}
    with pytest.raises(ValueError, match=r"gold answers \['Drogba'\] not among the candidates"):
        load_task("record").render(row)
