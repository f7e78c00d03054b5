"""Max-min fair shares of the engine's KV slots: between tenants, then between each
tenant's requests (anything with `tenant` and `live`, in arrival order)."""

from __future__ import annotations


def water_fill(demands: dict, capacity: int) -> dict:
    """Max-min fair integer split of `capacity` between keys wanting `demands[key]` units:
    equal slices, nobody given more than it wants, the remainder one each in key order."""
    alloc = dict.fromkeys(demands, 0)
    left = capacity
    wanting = [k for k, d in demands.items() if d > 0]
    while left > 0 and wanting:
        each = max(1, left // len(wanting))
        for k in wanting:
            give = min(each, demands[k] - alloc[k], left)
            alloc[k] += give
            left -= give
            if not left:
                break
        wanting = [k for k in wanting if alloc[k] < demands[k]]
    return alloc


def fair_shares(groups: list, capacity: int) -> dict:
    """Slots each request may hold: max-min fair between tenants, then between each
    tenant's requests; `groups` in arrival order, which breaks ties."""
    by_tenant: dict[str, list] = {}
    for g in groups:
        by_tenant.setdefault(g.tenant, []).append(g)
    tenant_share = water_fill({t: sum(len(g.live) for g in gs) for t, gs in by_tenant.items()}, capacity)
    shares: dict = {}
    for t, gs in by_tenant.items():
        shares.update(water_fill({g: len(g.live) for g in gs}, tenant_share[t]))
    return shares
