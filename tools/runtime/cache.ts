/**
 * PostHog's `meta.cache` extension (plugin-server `src/worker/vm/extensions/cache.ts` and the Redis
 * helpers of its `db.ts`) over a real Redis through ioredis:
 *
 * - keys `@plugin/<plugin id>/<team id>/<key>`; `set` stores JSON (unless `jsonSerialize: false`),
 *   with `SET … EX ttl` when a TTL is given; `get` parses it back, and a missing key reads as null
 *   whatever default is given (ioredis answers null, PostHog only fell back on undefined);
 * - `lpush` takes one string or an array of at most 1,000 (IllegalOperationError past that), elements
 *   stored as raw strings; `lrange`, `llen`, `lrem`, `incr`, `expire` as Redis answers them;
 * - `lpop(key, count)` is Redis `LPOP key count`. In `redis-6.0` mode that command is refused with the
 *   error Redis 6.0 gives, as it has no count argument before 6.2.
 */
import Redis from 'ioredis'

export type RedisMode = 'redis-7' | 'redis-6.0'

/** PostHog's error for an operation it forbids (its utils.ts). */
export class IllegalOperationError extends Error {
    name = 'IllegalOperationError'
}

/** Redis's own reply to `LPOP key count` before 6.2. */
export const REDIS_60_LPOP_ERROR = "ERR wrong number of arguments for 'lpop' command"

export const LPUSH_MAX_ELEMENTS = 1000

export interface CacheOptions {
    jsonSerialize?: boolean
}

/** The `meta.cache` a plugin sees. */
export interface PluginCache {
    set(key: string, value: unknown, ttlSeconds?: number, options?: CacheOptions): Promise<void>
    get(key: string, defaultValue: unknown, options?: CacheOptions): Promise<unknown>
    incr(key: string): Promise<number>
    expire(key: string, ttlSeconds: number): Promise<boolean>
    lpush(key: string, elementOrArray: unknown): Promise<number>
    lrange(key: string, startIndex: number, endIndex: number): Promise<string[]>
    llen(key: string): Promise<number>
    lrem(key: string, count: number, elementKey: string): Promise<number>
    lpop(key: string, count: number): Promise<string[] | null>
}

export interface RedisCacheOptions {
    redisUrl: string
    pluginId?: number
    teamId?: number
    mode?: RedisMode
}

export interface RedisCache {
    cache: PluginCache
    /** The full Redis key of a plugin key, for tests and fault scenarios. */
    keyOf(key: string): string
    /** The underlying client (tests read raw keys and TTLs with it). */
    client: Redis
    close(): Promise<void>
}

/** The error ioredis raises for a Redis error reply, without depending on its internals. */
function redisReplyError(message: string): Error {
    const error = new Error(message)
    error.name = 'ReplyError'
    return error
}

function lpushElements(elementOrArray: unknown): string | string[] {
    if (typeof elementOrArray === 'string') return elementOrArray
    if (!Array.isArray(elementOrArray))
        throw new Error('cache.lpush expects a string value or an array of strings')
    if (elementOrArray.length > LPUSH_MAX_ELEMENTS)
        throw new IllegalOperationError('Too many elements in array for cache.lpush. Maximum: 1000')
    return elementOrArray.map((element) => String(element))
}

function expectNumber(value: unknown, message: string): void {
    if (typeof value !== 'number') throw new Error(message)
}

function parseValue(value: string | null, jsonSerialize: boolean): unknown {
    if (value === null) return null
    if (!jsonSerialize) return value
    try {
        return JSON.parse(value)
    } catch {
        return null
    }
}

/** A Redis client that gives up on a command after one reconnection try, as a pool with a timeout would. */
export function connectRedis(redisUrl: string): Redis {
    const client = new Redis(redisUrl, {
        maxRetriesPerRequest: 1,
        retryStrategy: (times) => Math.min(times * 100, 1000),
    })
    // A Redis that is down shows in the commands' rejections; the connection's own errors are noise.
    client.on('error', () => undefined)
    return client
}

export function createRedisCache(options: RedisCacheOptions): RedisCache {
    const { pluginId = 1, teamId = 1, mode = 'redis-7' } = options
    const client = connectRedis(options.redisUrl)
    const keyOf = (key: string): string => `@plugin/${pluginId}/${teamId}/${key}`

    const cache: PluginCache = {
        async set(key, value, ttlSeconds, setOptions = {}) {
            const stored = (setOptions.jsonSerialize ?? true) ? JSON.stringify(value) : String(value)
            if (ttlSeconds) await client.set(keyOf(key), stored, 'EX', ttlSeconds)
            else await client.set(keyOf(key), stored)
        },
        async get(key, _defaultValue, getOptions = {}) {
            return parseValue(await client.get(keyOf(key)), getOptions.jsonSerialize ?? true)
        },
        incr: (key) => client.incr(keyOf(key)),
        async expire(key, ttlSeconds) {
            return (await client.expire(keyOf(key), ttlSeconds)) === 1
        },
        async lpush(key, elementOrArray) {
            const elements = lpushElements(elementOrArray)
            return client.lpush(keyOf(key), ...(Array.isArray(elements) ? elements : [elements]))
        },
        async lrange(key, startIndex, endIndex) {
            const message = 'cache.lrange expects a number for the start and end indexes'
            expectNumber(startIndex, message)
            expectNumber(endIndex, message)
            return client.lrange(keyOf(key), startIndex, endIndex)
        },
        llen: (key) => client.llen(keyOf(key)),
        async lrem(key, count, elementKey) {
            expectNumber(count, 'cache.lrem expects a number for the "count" argument')
            return client.lrem(keyOf(key), count, elementKey)
        },
        async lpop(key, count) {
            expectNumber(count, 'cache.lpop expects a number for the "count" argument')
            if (mode === 'redis-6.0') throw redisReplyError(REDIS_60_LPOP_ERROR)
            return client.lpop(keyOf(key), count)
        },
    }
    return {
        cache,
        keyOf,
        client,
        close: async () => {
            client.disconnect()
        },
    }
}
