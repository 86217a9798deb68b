/** The private redis-server the runtime, fault and relay tests stand on. */
import Redis from 'ioredis'
import { createConnection } from 'node:net'
import { startRedis, RedisServer } from '../../tools/lib/redis-server'

let server: RedisServer
beforeAll(async () => {
    server = await startRedis()
})
afterAll(() => server.stop())

test('serves a real Redis on a private loopback port, and a restart empties it', async () => {
    const client = new Redis(server.url, { maxRetriesPerRequest: 1, lazyConnect: true })
    await client.connect()
    await client.rpush('list', 'a', 'b', 'c')
    expect(await client.lrange('list', 0, -1)).toEqual(['a', 'b', 'c'])
    expect(server.url).toBe(`redis://127.0.0.1:${server.port}`)

    await server.restart()
    await client.ping() // ioredis reconnects by itself
    expect(await client.llen('list')).toBe(0)
    client.disconnect()
})

test('a killed server refuses connections until started again', async () => {
    await server.kill()
    const refused = await new Promise<boolean>((resolve) => {
        const socket = createConnection({ port: server.port, host: '127.0.0.1' })
        socket.once('connect', () => resolve(socket.destroy() && false))
        socket.once('error', () => resolve(true))
    })
    expect(refused).toBe(true)
    await server.start()
    const again = new Redis(server.url, { lazyConnect: true })
    await again.connect()
    expect(await again.ping()).toBe('PONG')
    again.disconnect()
})
