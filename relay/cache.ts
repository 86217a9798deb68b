/** `meta.cache` for the plugin: PostHog's cache extension on Redis (shared by instances), or in memory for one. */
import type { CacheExtension } from '@posthog/plugin-scaffold'
import type Redis from 'ioredis'

/** PostHog's cache refuses bigger lpush calls; the plugin keeps to it, so should every cache it meets. */
const LPUSH_MAX = 1000

function lpushItems(elementOrArray: unknown): string[] {
    const items = Array.isArray(elementOrArray) ? elementOrArray : [elementOrArray]
    if (items.length > LPUSH_MAX)
        throw new Error(`Too many elements in array for cache.lpush. Maximum: ${LPUSH_MAX}`)
    return items.map((item) => String(item))
}

function parseJson(raw: string | null, fallback: unknown): unknown {
    if (raw === null) return fallback ?? null
    try {
        return JSON.parse(raw)
    } catch {
        return fallback ?? null
    }
}

/** PostHog's semantics: values JSON-encoded and set with EX, list items raw strings, keys under one prefix. */
export function redisCache(client: Redis, prefix: string): CacheExtension {
    const k = (key: string) => prefix + key
    return {
        get: async (key, fallback) => parseJson(await client.get(k(key)), fallback),
        set: async (key, value, ttlSeconds) => {
            const json = JSON.stringify(value)
            if (ttlSeconds && ttlSeconds > 0) await client.set(k(key), json, 'EX', Math.ceil(ttlSeconds))
            else await client.set(k(key), json)
        },
        incr: (key) => client.incr(k(key)),
        expire: async (key, ttlSeconds) => (await client.expire(k(key), ttlSeconds)) === 1,
        lpush: async (key, elementOrArray) => client.lpush(k(key), ...lpushItems(elementOrArray)),
        lrange: (key, start, stop) => client.lrange(k(key), start, stop),
        llen: (key) => client.llen(k(key)),
        lpop: async (key, count) => (await client.lpop(k(key), count)) ?? [],
        lrem: (key, count, element) => client.lrem(k(key), count, element),
    }
}

interface Entry {
    value: string | string[]
    expiresAt: number
}

/** One process only, lost on restart: the relay says so at start and never acknowledges what it parks here. */
export function memoryCache(now: () => number = Date.now): CacheExtension {
    const entries = new Map<string, Entry>()
    const live = (key: string): Entry | undefined => {
        const entry = entries.get(key)
        if (entry && entry.expiresAt <= now()) entries.delete(key)
        return entries.get(key)
    }
    const list = (key: string): string[] => {
        const value = live(key)?.value
        if (value !== undefined && !Array.isArray(value)) throw new Error('WRONGTYPE not a list')
        return value ?? []
    }
    const store = (key: string, value: string | string[], ttlMs = Infinity) => {
        if (Array.isArray(value) && value.length === 0) entries.delete(key)
        else entries.set(key, { value, expiresAt: now() + ttlMs })
    }
    const keepTtl = (key: string) => (live(key)?.expiresAt ?? Infinity) - now()
    return {
        get: async (key, fallback) => {
            const value = live(key)?.value
            return parseJson(typeof value === 'string' ? value : null, fallback)
        },
        set: async (key, value, ttlSeconds) =>
            store(key, JSON.stringify(value), ttlSeconds ? ttlSeconds * 1000 : Infinity),
        incr: async (key) => {
            const next = (Number(live(key)?.value ?? 0) || 0) + 1
            store(key, String(next), keepTtl(key))
            return next
        },
        expire: async (key, ttlSeconds) => {
            const entry = live(key)
            if (entry) entry.expiresAt = now() + ttlSeconds * 1000
            return entry !== undefined
        },
        lpush: async (key, elementOrArray) => {
            const items = [...lpushItems(elementOrArray)].reverse().concat(list(key))
            store(key, items, keepTtl(key))
            return items.length
        },
        lrange: async (key, start, stop) => {
            const items = list(key)
            const end = stop < 0 ? items.length + stop : stop
            return items.slice(start < 0 ? Math.max(items.length + start, 0) : start, end + 1)
        },
        llen: async (key) => list(key).length,
        lpop: async (key, count) => {
            const items = list(key)
            store(key, items.slice(count), keepTtl(key))
            return items.slice(0, count)
        },
        lrem: async (key, count, element) => {
            const items = list(key)
            const order = count < 0 ? [...items.keys()].reverse() : [...items.keys()]
            const limit = count === 0 ? Infinity : Math.abs(count)
            const drop = new Set(order.filter((i) => items[i] === element).slice(0, limit))
            store(
                key,
                items.filter((_, i) => !drop.has(i)),
                keepTtl(key)
            )
            return drop.size
        },
    }
}
