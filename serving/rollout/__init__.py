"""Rolling out model versions: a registry of states, sticky routing, preflight checks and canary analysis.

These modules are self-contained: they never import the request path, which calls them —
`RoutingWatcher.table(name)` and `choose(table, user_id, pin)` per request, `preflight(...)` before a
version takes traffic, `advance(state, window)` every analysis interval. See docs/rollouts.md.
"""
