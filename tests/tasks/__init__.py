"""Tests of the task specs. ``PAPER_TASKS``: the tasks the reproduced papers run, which must stay
available (more may be added: a task is one ``tasks/<name>.yaml``, docs/adding-a-task.md)."""

PAPER_TASKS = frozenset(
    {
        # MeZO's OPT suite (Table 1): SuperGLUE, SST-2, SQuAD, DROP
        "sst2",
        "rte",
        "cb",
        "boolq",
        "wsc",
        "wic",
        "multirc",
        "copa",
        "record",
        "squad",
        "drop",
        # MeZO's RoBERTa suite (Table 18, LM-BFF's tasks)
        "sst5",
        "snli",
        "mnli",
        "trec",
    }
)
