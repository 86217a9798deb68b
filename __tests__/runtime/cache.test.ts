/** PostHog's cache extension over a real Redis: key prefix, JSON and TTL, list limits, and Redis 6.0's LPOP. */
import { startRedis, RedisServer } from '../../tools/lib/redis-server'
import { createRedisCache, RedisCache, REDIS_60_LPOP_ERROR } from '../../tools/runtime/cache'

let server: RedisServer
const opened: RedisCache[] = []
const open = (options: Partial<Parameters<typeof createRedisCache>[0]> = {}): RedisCache => {
    const cache = createRedisCache({ redisUrl: server.url, pluginId: 7, teamId: 3, ...options })
    opened.push(cache)
    return cache
}

beforeAll(async () => {
    server = await startRedis()
})
afterEach(async () => {
    for (const cache of opened.splice(0)) {
        await cache.client.flushall()
        await cache.close()
    }
})
afterAll(() => server.stop())

test('keys are @plugin/<plugin id>/<team id>/<key>; values JSON with SET EX', async () => {
    const { cache, client } = open()
    await cache.set('contact', { id: 'c1', n: 2 }, 120)
    expect(await client.get('@plugin/7/3/contact')).toBe('{"id":"c1","n":2}')
    const ttl = await client.ttl('@plugin/7/3/contact')
    expect(ttl).toBeGreaterThan(110)
    expect(ttl).toBeLessThanOrEqual(120)
    expect(await cache.get('contact', null)).toEqual({ id: 'c1', n: 2 })

    await cache.set('raw', 'plain text', undefined, { jsonSerialize: false })
    expect(await client.get('@plugin/7/3/raw')).toBe('plain text')
    expect(await client.ttl('@plugin/7/3/raw')).toBe(-1)
    expect(await cache.get('raw', null, { jsonSerialize: false })).toBe('plain text')
})

test('a missing key reads as null whatever the default; another team does not see the key', async () => {
    const { cache } = open()
    await cache.set('shared', 1)
    expect(await cache.get('absent', 'fallback')).toBeNull()
    expect(await open({ teamId: 4 }).cache.get('shared', 'fallback')).toBeNull()
})

test('incr, expire, lrange, llen and lrem answer as Redis does', async () => {
    const { cache, client } = open()
    expect(await cache.incr('lock')).toBe(1)
    expect(await cache.incr('lock')).toBe(2)
    expect(await cache.expire('lock', 30)).toBe(true)
    expect(await cache.expire('nothing', 30)).toBe(false)
    expect(await client.ttl('@plugin/7/3/lock')).toBeGreaterThan(0)

    expect(await cache.lpush('q', ['a', 'b', 'c'])).toBe(3)
    expect(await cache.lpush('q', 'd')).toBe(4)
    expect(await cache.lrange('q', 0, -1)).toEqual(['d', 'c', 'b', 'a'])
    expect(await cache.lrange('q', -2, -1)).toEqual(['b', 'a'])
    expect(await cache.llen('q')).toBe(4)
    expect(await cache.lrem('q', -1, 'a')).toBe(1)
    expect(await cache.lrem('q', -1, 'a')).toBe(0)
    expect(await cache.llen('q')).toBe(3)
    await expect(cache.lrange('q', '0' as unknown as number, 1)).rejects.toThrow(
        'cache.lrange expects a number for the start and end indexes'
    )
})

test('lpush takes at most 1,000 elements; past that IllegalOperationError and nothing is stored', async () => {
    const { cache } = open()
    const many = Array.from({ length: 1000 }, (_, i) => `item-${i}`)
    expect(await cache.lpush('q', many)).toBe(1000)
    const refused = await cache.lpush('q', [...many, 'one more']).catch((error: Error) => error)
    expect(refused).toMatchObject({
        name: 'IllegalOperationError',
        message: 'Too many elements in array for cache.lpush. Maximum: 1000',
    })
    expect(await cache.llen('q')).toBe(1000)
    await expect(cache.lpush('q', { not: 'a list' })).rejects.toThrow(
        'cache.lpush expects a string value or an array of strings'
    )
})

test('lpop(key, count) is LPOP with a count on Redis 7; Redis 6.0 refuses it and the list stays whole', async () => {
    const modern = open()
    await modern.cache.lpush('q', ['a', 'b', 'c'])
    expect(await modern.cache.lpop('q', 2)).toEqual(['c', 'b'])
    expect(await modern.cache.lpop('empty', 2)).toBeNull()

    const old = open({ mode: 'redis-6.0' })
    await old.cache.lpush('q6', ['a', 'b'])
    await expect(old.cache.lpop('q6', 1)).rejects.toThrow(REDIS_60_LPOP_ERROR)
    expect(REDIS_60_LPOP_ERROR).toBe("ERR wrong number of arguments for 'lpop' command")
    expect(await old.cache.llen('q6')).toBe(2)
    // What every supported Redis accepts still works in that mode.
    expect(await old.cache.lrange('q6', -1, -1)).toEqual(['a'])
    expect(await old.cache.lrem('q6', -1, 'a')).toBe(1)
})
