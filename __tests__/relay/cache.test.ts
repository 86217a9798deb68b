/** meta.cache in memory answers as the Redis one does (PostHog's semantics), for every call the plugin may make. */
import Redis from 'ioredis'
import type { CacheExtension } from '@posthog/plugin-scaffold'
import { memoryCache, redisCache } from '../../relay/cache'
import { redisAvailable, RedisServer, startRedis } from '../../tools/lib/redis-server'

const describeRedis = redisAvailable() ? describe : describe.skip

/** Each step: a call and its answer, run against both caches. */
const SCRIPT: [string, (cache: CacheExtension) => Promise<unknown>][] = [
    ['get missing', (c) => c.get('k', null)],
    ['set object with TTL', (c) => c.set('k', { a: 1, b: ['x'] }, 60)],
    ['get object', (c) => c.get('k', null)],
    ['set string', (c) => c.set('s', 'text')],
    ['get string', (c) => c.get('s', null)],
    ['incr new', (c) => c.incr('n')],
    ['incr again', (c) => c.incr('n')],
    ['expire existing', (c) => c.expire('n', 30)],
    ['expire missing', (c) => c.expire('missing', 30)],
    ['lpush one', (c) => c.lpush('l', ['a'])],
    ['lpush many', (c) => c.lpush('l', ['b', 'c', 'b'])],
    ['llen', (c) => c.llen('l')],
    ['lrange all', (c) => c.lrange('l', 0, -1)],
    ['lrange middle', (c) => c.lrange('l', 1, 2)],
    ['lrange negative', (c) => c.lrange('l', -2, -1)],
    ['lrem one b from head', (c) => c.lrem('l', 1, 'b')],
    ['lrange after lrem', (c) => c.lrange('l', 0, -1)],
    ['lrem all', (c) => c.lrem('l', 0, 'c')],
    ['lpop 2', (c) => c.lpop('l', 2)],
    ['lpop empty', (c) => c.lpop('l', 2)],
    ['llen empty', (c) => c.llen('l')],
    [
        'lpush over 1000 refused',
        (c) => c.lpush('l', Array.from({ length: 1001 }, String)).catch((e: Error) => e.message),
    ],
]

let server: RedisServer
let client: Redis
beforeAll(async () => {
    server = await startRedis()
    client = new Redis(server.url)
})
afterAll(async () => {
    client.disconnect()
    await server.stop()
})

describeRedis('memory cache = Redis cache', () => {
    test('same answers, call by call', async () => {
        const caches = [memoryCache(), redisCache(client, 'parity:')]
        for (const [name, step] of SCRIPT) {
            const [memory, redis] = [await step(caches[0]), await step(caches[1])]
            expect({ name, answer: memory }).toEqual({ name, answer: redis })
        }
    })

    test('Redis holds JSON values with EX and raw list items, under the prefix', async () => {
        const cache = redisCache(client, 'enc:')
        await cache.set('k', { a: 1 }, 60)
        await cache.lpush('l', ['{"raw":true}'])
        expect(await client.get('enc:k')).toBe('{"a":1}')
        expect(await client.ttl('enc:k')).toBeGreaterThan(50)
        expect(await client.lrange('enc:l', 0, -1)).toEqual(['{"raw":true}'])
    })

    test('in memory, a TTL expires', async () => {
        let now = 1_000_000
        const cache = memoryCache(() => now)
        await cache.set('k', 1, 10)
        now += 9_999
        expect(await cache.get('k', null)).toBe(1)
        now += 1
        expect(await cache.get('k', null)).toBeNull()
    })
})
