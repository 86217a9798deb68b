/**
 * The store under the replay's `meta.cache`. The plugin caches one contact id per email for a day, and an
 * in-memory store drops expired entries only when they are read: over a large export that is one entry per
 * person, for good. Here string keys are capped, the least recently used going first, as a Redis with an
 * LRU eviction policy would do; an evicted contact id only costs one more search. Lists (the plugin's retry
 * queue) are never evicted. PostHog's cache semantics stay those of the harness's createPluginCache on top.
 */
import { CacheStore, createMemoryStore } from './harness'

interface Entry {
    value: string
    expiresAt?: number
}

export const DEFAULT_MAX_KEYS = 100_000

export function createBoundedStore(maxKeys = DEFAULT_MAX_KEYS, now: () => number = Date.now): CacheStore {
    const lists = createMemoryStore(now)
    const strings = new Map<string, Entry>()

    /** The live entry, moved to the most recently used end; expired ones are dropped. */
    const live = (key: string): Entry | undefined => {
        const entry = strings.get(key)
        strings.delete(key)
        if (!entry || (entry.expiresAt !== undefined && entry.expiresAt <= now())) return undefined
        strings.set(key, entry) // Map order is the LRU order
        return entry
    }
    const put = (key: string, entry: Entry): void => {
        strings.delete(key)
        strings.set(key, entry)
        for (const oldest of strings.keys()) {
            if (strings.size <= maxKeys) break
            strings.delete(oldest)
        }
    }

    return {
        get: async (key) => live(key)?.value ?? null,
        set: async (key, value, ttlSeconds) => {
            put(key, { value, expiresAt: ttlSeconds ? now() + ttlSeconds * 1000 : undefined })
        },
        incr: async (key) => {
            const entry = live(key)
            const current = entry?.value ?? '0'
            if (!/^-?\d+$/.test(current)) throw new Error('ERR value is not an integer or out of range')
            const next = Number(current) + 1
            put(key, { value: String(next), expiresAt: entry?.expiresAt })
            return next
        },
        expire: async (key, ttlSeconds) => {
            const entry = live(key)
            if (!entry) return lists.expire(key, ttlSeconds)
            entry.expiresAt = now() + ttlSeconds * 1000
            return true
        },
        lpush: (key, values) => lists.lpush(key, values),
        lrange: (key, start, stop) => lists.lrange(key, start, stop),
        llen: (key) => lists.llen(key),
        lpop: (key, count) => lists.lpop(key, count),
        lrem: (key, count, value) => lists.lrem(key, count, value),
        clear: async (prefix) => {
            for (const key of [...strings.keys()]) if (key.startsWith(prefix)) strings.delete(key)
            await lists.clear(prefix)
        },
        close: async () => {
            strings.clear()
            await lists.close()
        },
    }
}
