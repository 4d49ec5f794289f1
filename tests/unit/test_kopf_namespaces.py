"""kopf's namespace observer with kubetune.kopf_namespaces: the namespaces its watch lists (events of type
None) are served like those of its first list; changes still go to kopf's own handler. The race itself,
against a real API server: tests/operator/test_namespace_race_cluster.py."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from kopf._cogs.structs import references
from kopf._core.reactor import observation

from kubetune import kopf_namespaces, manager
from kubetune.settings import load_settings

PATTERNS = ["ms-*"]


def namespace(name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, **extra}}


def served_after(insights: references.Insights, *events: dict[str, Any]) -> tuple[set[Any], int]:
    """What the observer serves after EVENTS, and how often it woke kopf's orchestrator."""
    wakeups = 0

    async def run() -> None:
        nonlocal wakeups

        async def orchestrator() -> None:
            nonlocal wakeups
            async with insights.revised:
                while True:
                    await insights.revised.wait()
                    wakeups += 1

        task = asyncio.create_task(orchestrator())
        await asyncio.sleep(0)  # the orchestrator waits before the first event
        for event in events:
            await kopf_namespaces.process_namespace_event(
                raw_event=event, namespaces=PATTERNS, insights=insights
            )
            await asyncio.sleep(0)
        task.cancel()

    asyncio.run(run())
    return set(insights.namespaces), wakeups


def test_a_namespace_only_the_watch_listed_is_served():
    # kopf's own handler drops it (the bug): the first list did not have it, the watch's list has it.
    insights = references.Insights()
    asyncio.run(
        observation.process_discovered_namespace_event(
            raw_event={"type": None, "object": namespace("ms-late")}, namespaces=PATTERNS, insights=insights
        )
    )
    assert insights.namespaces == set()

    served, wakeups = served_after(references.Insights(), {"type": None, "object": namespace("ms-late")})
    assert served == {"ms-late"}
    assert wakeups == 1


def test_listed_namespaces_already_served_or_not_matching_change_nothing_and_wake_nobody():
    insights = references.Insights()
    insights.namespaces.add("ms-known")
    served, wakeups = served_after(
        insights,
        {"type": None, "object": namespace("ms-known")},
        {"type": None, "object": namespace("default")},
    )
    assert served == {"ms-known"}
    assert wakeups == 0


def test_changes_still_go_to_kopfs_handler():
    served, wakeups = served_after(references.Insights(), {"type": "ADDED", "object": namespace("ms-new")})
    assert served == {"ms-new"}
    assert wakeups == 1
    insights = references.Insights()
    insights.namespaces.add("ms-old")
    served, _ = served_after(insights, {"type": "DELETED", "object": namespace("ms-old")})
    assert served == set()


def test_the_operator_installs_it_before_kopf_runs(monkeypatch):
    monkeypatch.setattr(
        observation, "process_discovered_namespace_event", kopf_namespaces.KOPF_NAMESPACE_EVENT_HANDLER
    )
    handler_when_kopf_runs = []
    monkeypatch.setattr(
        kopf, "run", lambda **_: handler_when_kopf_runs.append(observation.process_discovered_namespace_event)
    )
    manager.run_kopf(load_settings(leader_elect=False, health_port=0, namespaces=["ms-*"]), True, None)
    assert handler_when_kopf_runs == [kopf_namespaces.process_namespace_event]
