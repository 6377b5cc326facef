"""DeepSeek's expert-parallel load balancer (EPLB), re-implemented on numpy.

The algorithm of https://github.com/deepseek-ai/EPLB (``eplb.rebalance_experts``,
MIT licence), reproduced so that its documented example gives the same
output (see tests/test_planner.py):

1. *hierarchical* (when the node count divides the number of expert groups):
   pack whole expert groups onto nodes, balancing node load; inside each
   node, replicate the experts whose load per copy is highest until the
   node's physical slots are used; then pack the copies onto the node's GPUs;
2. otherwise *global*: the same with one node and one group.

Packing gives every pack the same number of items, taking items by
decreasing load and putting each on the least-loaded pack with room (ties to
the lower index). Loads are float32 as in the reference, so ties break alike.
"""

from __future__ import annotations

import heapq

import numpy as np


def balanced_packing(weight: np.ndarray, packs: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows × items) weights → pack index and slot within the pack of each item; equal item counts per pack."""
    rows, items = weight.shape
    if items % packs:
        raise ValueError(f"{items} items do not split evenly over {packs} packs")
    per_pack = items // packs
    if per_pack == 1:
        return np.tile(np.arange(items), (rows, 1)), np.zeros((rows, items), dtype=np.int64)
    pack_index = np.full((rows, items), -1, dtype=np.int64)
    slot = np.full((rows, items), -1, dtype=np.int64)
    for row in range(rows):
        w = weight[row].astype(np.float32)
        heap = [(np.float32(0.0), p) for p in range(packs)]
        filled = [0] * packs
        for item in np.argsort(-w, kind="stable"):
            load, p = heapq.heappop(heap)
            pack_index[row, item], slot[row, item] = p, filled[p]
            filled[p] += 1
            if filled[p] < per_pack:
                heapq.heappush(heap, (np.float32(load + w[item]), p))
    return pack_index, slot


def replicate_experts(weight: np.ndarray, physical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add copies one at a time to the expert with the highest load per copy.

    Returns phy2log (rows × physical: logical expert of each copy), the copy's
    rank among its expert's copies, and copies per logical expert.
    """
    rows, logical = weight.shape
    if physical < logical:
        raise ValueError(f"{physical} physical slots cannot hold {logical} experts")
    phy2log = np.tile(np.arange(physical), (rows, 1))
    copy_rank = np.zeros((rows, physical), dtype=np.int64)
    count = np.ones((rows, logical), dtype=np.int64)
    w = weight.astype(np.float32)
    every_row = np.arange(rows)
    for i in range(logical, physical):
        hottest = np.argmax(w / count.astype(np.float32), axis=1)
        phy2log[:, i] = hottest
        copy_rank[:, i] = count[every_row, hottest]
        count[every_row, hottest] += 1
    return phy2log, copy_rank, count


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def rebalance_hierarchical(weight: np.ndarray, physical: int, groups: int, nodes: int, gpus: int):
    layers, logical = weight.shape
    if logical % groups or groups % nodes or gpus % nodes or physical % gpus:
        raise ValueError("EPLB needs experts % groups == groups % nodes == gpus % nodes == physical % gpus == 0")
    group_size = logical // groups
    per_gpu = physical // gpus
    w = weight.astype(np.float32)

    # 1. expert groups onto nodes
    group_load = w.reshape(layers, groups, group_size).sum(axis=-1)
    group_pack, group_slot = balanced_packing(group_load, nodes)
    node_order = ((group_pack * (groups // nodes) + group_slot) * group_size)[:, :, None] + np.arange(group_size)
    log2mlog = node_order.reshape(layers, logical)  # logical id → id in node-major order
    mlog2log = _inverse(log2mlog)

    # 2. copies inside each node
    node_load = np.take_along_axis(w, mlog2log, axis=1).reshape(-1, logical // nodes)
    phy2mlog, copy_rank, mlog_count = replicate_experts(node_load, physical // nodes)

    # 3. copies onto the node's GPUs
    copy_load = np.take_along_axis(node_load / mlog_count.astype(np.float32), phy2mlog, axis=1)
    gpu, slot = balanced_packing(copy_load, gpus // nodes)
    phy2pphy = gpu * per_gpu + slot
    pphy2phy = _inverse(phy2pphy)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, axis=1)
    pphy2mlog = (pphy2mlog.reshape(layers, nodes, -1) + np.arange(0, logical, logical // nodes)[None, :, None]).reshape(layers, -1)
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog, axis=1)
    pphy_rank = np.take_along_axis(copy_rank, pphy2phy, axis=1).reshape(layers, -1)
    count = np.take_along_axis(mlog_count.reshape(layers, -1), log2mlog, axis=1)
    return pphy2log, pphy_rank, count


def rebalance_experts(weight: np.ndarray, replicas: int, groups: int, nodes: int, gpus: int):
    """EPLB's entry point: (layers × logical experts) loads → phy2log, log2phy, count.

    ``replicas`` is the number of physical expert slots (a multiple of
    ``gpus``); GPU g hosts phy2log[:, g·per_gpu:(g+1)·per_gpu]. log2phy lists
    each expert's physical slots, padded with -1.
    """
    weight = np.asarray(weight, dtype=np.float32)
    layers, logical = weight.shape
    if groups % nodes == 0:
        phy2log, phy_rank, count = rebalance_hierarchical(weight, replicas, groups, nodes, gpus)
    else:
        phy2log, phy_rank, count = rebalance_hierarchical(weight, replicas, 1, 1, gpus)
    widest = int(count.max())
    log2phy = np.full((layers, logical * widest), -1, dtype=np.int64)
    np.put_along_axis(log2phy, phy2log * widest + phy_rank, np.broadcast_to(np.arange(replicas), (layers, replicas)), axis=1)
    return phy2log, log2phy.reshape(layers, logical, widest), count
