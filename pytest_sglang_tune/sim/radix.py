"""A radix tree over token ids with reference locks and LRU eviction (SGLang's RadixCache, in miniature).

Only sizes are tracked (no KV indices): ``total_size`` tokens live in the tree, of which ``evictable_size``
belong to nodes no running request holds. With ``page_size > 1`` only whole pages are shared: keys are cut to a
multiple of the page size before matching or inserting. Time stamps come from the caller (the sim clock), and
ties are broken by node creation order, so eviction is deterministic.
"""

from __future__ import annotations

import heapq

__all__ = ["RadixCache", "RadixNode"]


class RadixNode:
    __slots__ = ("children", "key", "last_access", "lock", "order", "parent")

    def __init__(self, key: list[int], parent: RadixNode | None, order: int, now: float) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[object, RadixNode] = {}  # keyed by the first token (or first page)
        self.lock = 0
        self.last_access = now
        self.order = order


class RadixCache:
    """Prefix cache of token sequences; see the module docstring."""

    def __init__(self, page_size: int = 1) -> None:
        self.page_size = max(1, page_size)
        self._order = 0
        self.root = RadixNode([], None, 0, 0.0)
        self.root.lock = 1  # never evicted
        self.total_size = 0
        self.evictable_size = 0

    def reset(self) -> None:
        """Drop every unlocked entry (``/flush_cache`` when no request runs)."""
        self.__init__(self.page_size)  # type: ignore[misc]

    def _ck(self, key: list[int], pos: int) -> object:
        """Child key: the token at ``pos``, or the page starting there when pages are larger than 1."""
        return key[pos] if self.page_size == 1 else tuple(key[pos : pos + self.page_size])

    @property
    def protected_size(self) -> int:
        return self.total_size - self.evictable_size

    def _aligned(self, n: int) -> int:
        return n - n % self.page_size

    @staticmethod
    def _common(key: list[int], start: int, edge: list[int], limit: int) -> int:
        """How many tokens of ``edge`` match ``key[start:limit]`` (slice compares in C, then narrowing)."""
        n = min(len(edge), limit - start)
        if n <= 0:
            return 0
        if key[start : start + n] == (edge if n == len(edge) else edge[:n]):
            return n
        pos = 0
        for step in (512, 64, 8, 1):
            while pos + step <= n and key[start + pos : start + pos + step] == edge[pos : pos + step]:
                pos += step
        return pos

    def peek(self, key: list[int]) -> int:
        """Length of the cached prefix of ``key`` without touching the tree (for ``lpm`` ordering)."""
        limit = self._aligned(len(key))
        node, pos = self.root, 0
        while pos < limit:
            child = node.children.get(self._ck(key, pos))
            if child is None:
                break
            n = self._common(key, pos, child.key, limit)
            pos += n
            if n < len(child.key):
                break
            node = child
        return self._aligned(min(pos, limit))

    def match_prefix(self, key: list[int], now: float) -> tuple[int, RadixNode]:
        """Longest cached prefix of ``key`` (page aligned); splits a node matched part-way, like SGLang."""
        limit = self._aligned(len(key))
        node, pos = self.root, 0
        node.last_access = now
        while pos < limit:
            child = node.children.get(self._ck(key, pos))
            if child is None:
                break
            n = self._aligned(self._common(key, pos, child.key, limit))
            if n == 0:
                break
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            pos += n
            node = child
        return pos, node

    def _split(self, node: RadixNode, n: int) -> RadixNode:
        """Cut ``node``'s edge after ``n`` tokens; returns the new upper node."""
        parent = node.parent
        assert parent is not None
        self._order += 1
        upper = RadixNode(node.key[:n], parent, self._order, node.last_access)
        upper.lock = node.lock
        parent.children[self._ck(upper.key, 0)] = upper
        node.key = node.key[n:]
        node.parent = upper
        upper.children[self._ck(node.key, 0)] = node
        return upper

    def insert(self, key: list[int], now: float) -> tuple[int, RadixNode]:
        """Insert ``key`` (page aligned); returns (length that was already cached, node of the full key)."""
        limit = self._aligned(len(key))
        node, pos = self.root, 0
        node.last_access = now
        while pos < limit:
            child = node.children.get(self._ck(key, pos))
            if child is None:
                self._order += 1
                new = RadixNode(list(key[pos:limit]), node, self._order, now)
                node.children[self._ck(key, pos)] = new
                added = limit - pos
                self.total_size += added
                self.evictable_size += added  # a fresh leaf has no lock
                return pos, new
            n = self._aligned(self._common(key, pos, child.key, limit))
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            pos += n
            node = child
        return pos, node

    def lock(self, node: RadixNode) -> None:
        while node is not self.root and node is not None:
            if node.lock == 0:
                self.evictable_size -= len(node.key)
            node.lock += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: RadixNode) -> None:
        while node is not self.root and node is not None:
            node.lock -= 1
            if node.lock == 0:
                self.evictable_size += len(node.key)
            node = node.parent  # type: ignore[assignment]

    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` (if possible) from unlocked leaves, least recently used first."""
        if num_tokens <= 0 or self.evictable_size == 0:
            return 0
        heap: list[tuple[float, int, RadixNode]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node.lock == 0:
                heap.append((node.last_access, node.order, node))
        heapq.heapify(heap)
        freed = 0
        while heap and freed < num_tokens:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[self._ck(leaf.key, 0)]
            size = len(leaf.key)
            freed += size
            self.total_size -= size
            self.evictable_size -= size
            if parent is not self.root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last_access, parent.order, parent))
        return freed
