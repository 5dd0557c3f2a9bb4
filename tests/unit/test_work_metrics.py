"""The queue per organisation keeps its series bounded: the organisations with the most queued work by name, the
rest summed as `other`, with their oldest."""

from datetime import UTC, datetime, timedelta

from app.core.work_metrics import OTHER, TOP_ORGANIZATIONS, top_organizations

START = datetime(2026, 1, 1, tzinfo=UTC)


def test_organisations_beyond_the_top_are_summed_as_other_with_their_oldest() -> None:
    queued = [(f"org-{i}", 100 - i, START + timedelta(minutes=i)) for i in range(TOP_ORGANIZATIONS + 5)]

    shown = top_organizations(list(reversed(queued)))

    assert [row[0] for row in shown] == [f"org-{i}" for i in range(TOP_ORGANIZATIONS)] + [OTHER]
    rest = queued[TOP_ORGANIZATIONS:]
    assert shown[-1] == (OTHER, sum(row[1] for row in rest), rest[0][2])


def test_a_few_organisations_are_shown_by_name_only() -> None:
    queued = [("org-a", 2, START), ("org-b", 5, START)]
    assert [row[0] for row in top_organizations(queued)] == ["org-b", "org-a"]
