"""kopf serves every namespace that matches the operator's patterns (``kubetune operator -n 'team-*'``),
including one created while the operator starts.

How kopf 1.45.2 follows namespace patterns (kopf/_core/reactor/observation.py, ``namespace_observer``):
it lists the namespaces and serves those that match; then it watches namespaces. That watch starts with
a list of its own (kopf/_cogs/clients/watching.py, ``continuous_watch``), whose objects reach the
observer as events of type None, and streams changes only from that second list on. The observer's event
handler (``process_discovered_namespace_event``) returns at once on type None. So a namespace created
after the first list and before the second is in neither: kopf never serves it, and its objects are never
reconciled, without a log line, until the namespace itself changes (no resync or re-list repairs it).
The window is short but opens on every start, and load widens it: the serve tests' first namespace,
created as soon as the operator's /healthz answered, fell into it in CI.

``serve_namespaces_listed_by_the_watch`` makes the observer treat the watch's list as it treats its first
one (kopf's ``revise_namespaces``): a listed namespace that matches is served. Changes (added, modified,
deleted) still go to kopf's own handler, unchanged. A listed namespace wakes kopf's
orchestrator only when it changes what is served, so a start among thousands of namespaces costs nothing
more than before. tests/operator/test_namespace_race_cluster.py forces the race.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kopf._cogs.structs import bodies, references
from kopf._core.reactor import observation

KOPF_NAMESPACE_EVENT_HANDLER = observation.process_discovered_namespace_event


async def process_namespace_event(
    *,
    raw_event: bodies.RawEvent,
    namespaces: Collection[references.NamespacePattern],
    insights: references.Insights,
    **kwargs: Any,
) -> None:
    """kopf's handler of namespace events, for the watch's listed namespaces (type None) too."""
    if raw_event["type"] is not None:
        await KOPF_NAMESPACE_EVENT_HANDLER(
            raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs
        )
        return
    name = raw_event["object"]["metadata"]["name"]
    async with insights.revised:
        served = name in insights.namespaces
        observation.revise_namespaces(raw_events=[raw_event], insights=insights, namespaces=namespaces)
        if (name in insights.namespaces) != served:
            insights.revised.notify_all()


def serve_namespaces_listed_by_the_watch() -> None:
    """Make kopf's namespace observer serve what its watch lists (the module's docstring says why). Call
    before kopf starts; calling it again changes nothing."""
    observation.process_discovered_namespace_event = process_namespace_event
