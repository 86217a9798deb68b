/** PostHog's `meta.cache` extension over a real Redis, or over an in-memory store that answers as Redis does.
 * As plugin-server's `extensions/cache.ts` and the Redis helpers of its `db.ts`: keys are
 * `@plugin/<plugin id>/<team id>/<key>`; a missing or empty value reads as null whatever default is given
 * (ioredis answers null; PostHog only fell back on undefined). `redis-6.0` mode refuses `LPOP key count` as
 * Redis did before 6.2.
 */
import Redis from 'ioredis'

export type RedisMode = 'redis-7' | 'redis-6.0'

/** PostHog's error for an operation it forbids (its utils.ts). */
export class IllegalOperationError extends Error {
    name = 'IllegalOperationError'
}

/** Redis's own reply to `LPOP key count` before 6.2. */
export const REDIS_60_LPOP_ERROR = "ERR wrong number of arguments for 'lpop' command"

/** The Redis commands the cache extension uses, on string values. */
export interface CacheStore {
    get(key: string): Promise<string | null>
    set(key: string, value: string, ttlSeconds?: number): Promise<void>
    incr(key: string): Promise<number>
    expire(key: string, ttlSeconds: number): Promise<boolean>
    lpush(key: string, values: string[]): Promise<number>
    lrange(key: string, start: number, stop: number): Promise<string[]>
    llen(key: string): Promise<number>
    lpop(key: string, count: number): Promise<string[] | null>
    lrem(key: string, count: number, value: string): Promise<number>
    /** Deletes every key that starts with the prefix. */
    clear(prefix: string): Promise<void>
    close(): Promise<void>
}

type CacheOptions = { jsonSerialize?: boolean }

function lpushElements(elementOrArray: unknown): string[] {
    if (typeof elementOrArray === 'string') return [elementOrArray]
    if (!Array.isArray(elementOrArray))
        throw new Error('cache.lpush expects a string value or an array of strings')
    if (elementOrArray.length > 1000)
        throw new IllegalOperationError('Too many elements in array for cache.lpush. Maximum: 1000')
    return elementOrArray.map((element) => String(element))
}

/** PostHog's check on `count` of lrem and lpop. */
function expectCount(command: string, count: unknown): void {
    if (typeof count !== 'number')
        throw new Error(`cache.${command} expects a number for the "count" argument`)
}

function parseValue(value: string | null, jsonSerialize: boolean): unknown {
    if (!value || !jsonSerialize) return value || null
    try {
        return JSON.parse(value)
    } catch {
        return null
    }
}

/** The cache extension over a store, every key under `namespace`: the `meta.cache` a plugin sees. */
export function createPluginCache(store: CacheStore, namespace: string) {
    const keyOf = (key: string): string => `${namespace}${key}`
    return {
        async set(key: string, value: unknown, ttlSeconds?: number, options: CacheOptions = {}) {
            const stored = (options.jsonSerialize ?? true) ? JSON.stringify(value) : String(value)
            await store.set(keyOf(key), stored, ttlSeconds)
        },
        async get(key: string, _defaultValue: unknown, options: CacheOptions = {}): Promise<unknown> {
            return parseValue(await store.get(keyOf(key)), options.jsonSerialize ?? true)
        },
        incr: (key: string) => store.incr(keyOf(key)),
        expire: (key: string, ttlSeconds: number) => store.expire(keyOf(key), ttlSeconds),
        lpush: async (key: string, elementOrArray: unknown) =>
            store.lpush(keyOf(key), lpushElements(elementOrArray)),
        async lrange(key: string, startIndex: number, endIndex: number) {
            if (typeof startIndex !== 'number' || typeof endIndex !== 'number')
                throw new Error('cache.lrange expects a number for the start and end indexes')
            return store.lrange(keyOf(key), startIndex, endIndex)
        },
        llen: (key: string) => store.llen(keyOf(key)),
        async lrem(key: string, count: number, elementKey: string) {
            expectCount('lrem', count)
            return store.lrem(keyOf(key), count, elementKey)
        },
        async lpop(key: string, count: number) {
            expectCount('lpop', count)
            return store.lpop(keyOf(key), count)
        },
    }
}

const WRONG_TYPE = 'WRONGTYPE Operation against a key holding the wrong kind of value'

/** Removes `count` occurrences like LREM: from the head if positive, the tail if negative, all if 0. */
function removeOccurrences(list: string[], count: number, value: string): number {
    const indexes = list.map((item, index) => (item === value ? index : -1)).filter((index) => index >= 0)
    const limit = count === 0 ? Infinity : Math.abs(count)
    const chosen = (count < 0 ? indexes.reverse() : indexes).slice(0, limit)
    for (const index of [...chosen].sort((a, b) => b - a)) list.splice(index, 1)
    return chosen.length
}

export type PluginCache = ReturnType<typeof createPluginCache>

/** An in-process stand-in for Redis with the same answers, TTLs checked on access. */
export function createMemoryStore(now: () => number = Date.now): CacheStore {
    const entries = new Map<string, { value: string | string[]; expiresAt?: number }>()
    const live = (key: string) => {
        const entry = entries.get(key)
        if (entry?.expiresAt !== undefined && entry.expiresAt <= now()) entries.delete(key)
        return entries.get(key)
    }
    const stringAt = (key: string): string | null => {
        const value = live(key)?.value ?? null
        if (Array.isArray(value)) throw new Error(WRONG_TYPE)
        return value
    }
    const listAt = (key: string): string[] | undefined => {
        const value = live(key)?.value
        if (typeof value === 'string') throw new Error(WRONG_TYPE)
        return value
    }
    /** Runs `change` on the list at `key` in place; Redis deletes a list once it is empty. */
    const onList = <T>(key: string, change: (list: string[]) => T): T => {
        const list = listAt(key) ?? []
        const result = change(list)
        if (list.length === 0) entries.delete(key)
        else if (!entries.has(key)) entries.set(key, { value: list })
        return result
    }

    return {
        get: async (key) => stringAt(key),
        set: async (key, value, ttlSeconds) => {
            entries.set(key, { value, expiresAt: ttlSeconds ? now() + ttlSeconds * 1000 : undefined })
        },
        incr: async (key) => {
            const current = stringAt(key) ?? '0'
            if (!/^-?\d+$/.test(current)) throw new Error('ERR value is not an integer or out of range')
            entries.set(key, { value: String(Number(current) + 1), expiresAt: live(key)?.expiresAt })
            return Number(current) + 1
        },
        expire: async (key, ttlSeconds) => {
            const entry = live(key)
            if (entry) entry.expiresAt = now() + ttlSeconds * 1000
            return entry !== undefined
        },
        lpush: async (key, values) => onList(key, (list) => list.unshift(...[...values].reverse())),
        lrange: async (key, start, stop) => {
            const list = listAt(key) ?? []
            // Redis's LRANGE: inclusive, negative indexes count from the end.
            const from = Math.max(start < 0 ? list.length + start : start, 0)
            const to = Math.min(stop < 0 ? list.length + stop : stop, list.length - 1)
            return from > to ? [] : list.slice(from, to + 1)
        },
        llen: async (key) => listAt(key)?.length ?? 0,
        lpop: async (key, count) => (listAt(key) ? onList(key, (list) => list.splice(0, count)) : null),
        lrem: async (key, count, value) => onList(key, (list) => removeOccurrences(list, count, value)),
        clear: async (prefix) => {
            for (const key of [...entries.keys()]) if (key.startsWith(prefix)) entries.delete(key)
        },
        close: async () => undefined,
    }
}

/** The store on a real Redis, so workers share it the way PostHog's servers did. */
export function createRedisStore(
    redisUrl: string,
    mode: RedisMode = 'redis-7'
): CacheStore & { client: Redis } {
    // A command gives up after one reconnection try, as a pool with a timeout would.
    const client = new Redis(redisUrl, {
        maxRetriesPerRequest: 1,
        retryStrategy: (times) => Math.min(times * 100, 1000),
    })
    // A Redis that is down shows in the commands' rejections; the connection's own errors are noise.
    client.on('error', () => undefined)
    return {
        client,
        get: (key) => client.get(key),
        set: async (key, value, ttlSeconds) => {
            if (ttlSeconds) await client.set(key, value, 'EX', ttlSeconds)
            else await client.set(key, value)
        },
        incr: (key) => client.incr(key),
        expire: async (key, ttlSeconds) => (await client.expire(key, ttlSeconds)) === 1,
        lpush: (key, values) => client.lpush(key, ...values),
        lrange: (key, start, stop) => client.lrange(key, start, stop),
        llen: (key) => client.llen(key),
        lpop: async (key, count) => {
            if (mode === 'redis-6.0')
                throw Object.assign(new Error(REDIS_60_LPOP_ERROR), { name: 'ReplyError' })
            return client.lpop(key, count)
        },
        lrem: (key, count, value) => client.lrem(key, count, value),
        clear: async (prefix) => {
            let cursor = '0'
            do {
                const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
                if (keys.length > 0) await client.del(...keys)
                cursor = next
            } while (cursor !== '0')
        },
        close: async () => client.disconnect(),
    }
}

/** PostHog's cache of one plugin of one team, on a real Redis. */
export function createRedisCache(options: {
    redisUrl: string
    pluginId?: number
    teamId?: number
    mode?: RedisMode
}) {
    const { redisUrl, pluginId = 1, teamId = 1, mode } = options
    const store = createRedisStore(redisUrl, mode)
    const namespace = `@plugin/${pluginId}/${teamId}/`
    return {
        cache: createPluginCache(store, namespace),
        /** The full Redis key of a plugin key, for tests and fault scenarios. */
        keyOf: (key: string) => `${namespace}${key}`,
        /** The underlying client (tests read raw keys and TTLs with it). */
        client: store.client,
        close: store.close,
    }
}

export type RedisCache = ReturnType<typeof createRedisCache>
