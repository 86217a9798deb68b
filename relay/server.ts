/** The relay's HTTP server: PostHog's webhook destination in, the plugin's outcomes out.
 *
 * An HTTP endpoint for PostHog's HTTP Webhook destination that runs the plugin (index.ts) as an
 * ordinary module. It answers 2xx only once every event of a request is delivered, parked in Redis or
 * refused for good, and 503 otherwise, so that PostHog retries (CDP retries 408/429/5xx and network errors).
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { createServer, STATUS_CODES } from 'node:http'
import Fastify, {
    FastifyBaseLogger,
    FastifyInstance,
    FastifyReply,
    FastifyRequest,
    LogController,
} from 'fastify'
import Redis from 'ioredis'
import pino, { Logger } from 'pino'
import { ProcessedPluginEvent, RetryError } from '@posthog/plugin-scaffold'
import { findEmail, Global, onEvent, Outcome, PluginMeta, runEveryMinute, setupPlugin } from '../index'
import { memoryCache, redisCache } from './cache'
import type { RelaySettings } from './config'
import { intercomFetch } from './fetch'
import { Locks, memoryLocks, redisLocks } from './lock'
import { createMetrics, RelayMetrics } from './metrics'
import { QUEUE_KEY, startDrainLoop } from './drain'
import { bodySchema, itemsOf, toPluginEvent, WebhookBody, WebhookItem } from './payload'

export const SECRET_HEADER = 'x-relay-secret'
/** The plugin's own backoff key, read for the backoff metric. */
const BACKOFF_KEY = 'intercom:backoff-until'
/** How long an event waits for another event of the same person (on any instance) before a 503: within
 * PostHog's 10 s webhook timeout. */
const PERSON_WAIT_MS = 8_000
/** Events of one request handled at once (each person's events still one at a time). */
const ITEM_CONCURRENCY = 16
/** CDP honours Retry-After (capped); older versions retry after 1–3 s anyway. */
const RETRY_AFTER_SECONDS = 2

export type ItemStatus = Outcome['status'] | 'refused' | 'retry'

export interface ItemResult {
    uuid: string
    status: ItemStatus
    reason?: string
}

export interface Relay {
    app: FastifyInstance
    logger: Logger
    metrics: RelayMetrics
    /** Listens on settings.host/port; resolves with the URL. */
    listen(): Promise<string>
    /** Stops accepting, finishes what is in flight (requests and a drain), then disconnects Redis. */
    close(): Promise<void>
    /** One drain of the retry queue under the shared lock (the timer calls it too); null when another holds it. */
    drain(): Promise<Awaited<ReturnType<typeof runEveryMinute>> | null>
}

export interface RelayOptions {
    /** Defaults to a pino logger on stdout at settings.logLevel. */
    logger?: Logger
}

/** Constant time whatever the lengths: both sides are hashed first. */
export function secretMatches(expected: string, given: unknown): boolean {
    const digest = (text: string) => createHash('sha256').update(text).digest()
    return typeof given === 'string' && timingSafeEqual(digest(expected), digest(given))
}

function isRetry(error: unknown): boolean {
    return error instanceof RetryError || (error as Error | null)?.name === 'RetryError'
}

/** Events of one email (else one distinct_id) go one at a time across instances: one search per email. */
function personKey(meta: PluginMeta, event: ProcessedPluginEvent, person: WebhookItem['person']): string {
    const email = findEmail(event, person ?? null, meta.global.settings.emailProperty)
    const identity = email ? `email:${email}` : `distinct_id:${event.distinct_id}`
    return createHash('sha256').update(identity).digest('hex').slice(0, 32)
}

async function mapLimit<T, R>(items: T[], limit: number, task: (item: T) => Promise<R>): Promise<R[]> {
    const results: R[] = new Array(items.length)
    let next = 0
    const worker = async () => {
        while (next < items.length) {
            const index = next++
            results[index] = await task(items[index])
        }
    }
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
    return results
}

interface SharedState {
    cache: PluginMeta['cache'] & object
    locks: Locks
    redis: Redis | null
}

async function connectRedis(url: string, logger: Logger): Promise<Redis> {
    const client = new Redis(url, {
        // Fail at once while Redis is down (the request gets a 503) instead of queueing commands.
        enableOfflineQueue: false,
        maxRetriesPerRequest: 1,
        commandTimeout: 2000,
        connectTimeout: 2000,
        retryStrategy: (attempt) => Math.min(attempt * 100, 1000),
        lazyConnect: true,
    })
    let down = false
    client.on('error', (error) => {
        if (!down)
            logger.warn(
                { err: { message: error.message } },
                'Redis unreachable: events get 503 until it is back'
            )
        down = true
    })
    client.on('ready', () => {
        if (down) logger.info('Redis reachable again')
        down = false
    })
    await client.connect()
    return client
}

async function sharedState(settings: RelaySettings, logger: Logger): Promise<SharedState> {
    if (!settings.redisUrl) {
        logger.warn(
            'REDIS_URL is not set: contact cache, backoff and retry queue are in memory, for this instance only. Events that would be parked are answered 503 (PostHog retries them); run with Redis in production.'
        )
        return { cache: memoryCache(), locks: memoryLocks(), redis: null }
    }
    const redis = await connectRedis(settings.redisUrl, logger)
    return {
        cache: redisCache(redis, `${settings.redisPrefix}cache:`),
        locks: redisLocks(redis, settings.redisPrefix),
        redis,
    }
}

function pluginLogger(logger: Logger): PluginMeta['logger'] {
    const child = logger.child({ component: 'plugin' })
    return {
        log: (...args: unknown[]) => child.info(args.join(' ')),
        info: (...args: unknown[]) => child.info(args.join(' ')),
        debug: (...args: unknown[]) => child.debug(args.join(' ')),
        warn: (...args: unknown[]) => child.warn(args.join(' ')),
        error: (...args: unknown[]) => child.error(args.join(' ')),
    }
}

export async function createRelay(settings: RelaySettings, options: RelayOptions = {}): Promise<Relay> {
    const logger =
        options.logger ?? pino({ level: settings.logLevel, base: { service: 'posthog-intercom-relay' } })
    const metrics = createMetrics()
    const shared = await sharedState(settings, logger)
    const durable = shared.redis !== null
    const http = intercomFetch({ override: settings.intercomOverride, onCall: metrics.intercomCall })
    const meta: PluginMeta = {
        config: settings.plugin,
        global: {} as Global,
        cache: shared.cache,
        fetch: http,
        logger: pluginLogger(logger),
    }
    if (settings.intercomOverride)
        logger.warn('Intercom calls go to the local emulator (RELAY_INTERCOM_EMULATOR_URL)')
    try {
        // The plugin's own validation: its messages are the ones a user acts on.
        await setupPlugin(meta)
    } catch (error) {
        shared.redis?.disconnect()
        http.destroy()
        throw error
    }

    const handleItem = async (item: WebhookItem): Promise<ItemResult> => {
        const event = toPluginEvent(item)
        const uuid = event.uuid
        let outcome: Outcome | { error: unknown }
        try {
            outcome = await shared.locks.withLock(
                `person:${personKey(meta, event, item.person)}`,
                () =>
                    onEvent(event, { ...meta, person: item.person ?? null }).catch((error: unknown) => ({
                        error,
                    })),
                PERSON_WAIT_MS
            )
        } catch (error) {
            // The lock itself failed: Redis is down or the person is busy for too long.
            return { uuid, status: 'retry', reason: `shared state unavailable (${(error as Error).message})` }
        }
        if ('error' in outcome) {
            const message = (outcome.error as Error)?.message ?? String(outcome.error)
            return { uuid, status: isRetry(outcome.error) ? 'retry' : 'refused', reason: message }
        }
        if (outcome.status === 'queued' && !durable) {
            return { uuid, status: 'retry', reason: `${outcome.reason}: no Redis to park it in` }
        }
        return { uuid, status: outcome.status, ...(outcome.reason ? { reason: outcome.reason } : {}) }
    }

    const app = Fastify({
        loggerInstance: logger as FastifyBaseLogger,
        // One line per refused or failed request instead of two per request: logs carry no payloads anyway.
        logController: new LogController({ disableRequestLogging: true }),
        bodyLimit: settings.bodyLimitBytes,
        // A client too slow to send its request gets a 408 after requestTimeoutMs (checked 4 times as often),
        // before the idle socket timeout would close it without an answer.
        serverFactory: (handler) =>
            createServer(
                {
                    requestTimeout: settings.requestTimeoutMs,
                    headersTimeout: settings.requestTimeoutMs,
                    connectionsCheckingInterval: Math.max(50, Math.floor(settings.requestTimeoutMs / 4)),
                },
                handler
            ),
        requestTimeout: settings.requestTimeoutMs,
        connectionTimeout: settings.requestTimeoutMs * 2,
        forceCloseConnections: 'idle',
        return503OnClosing: true,
        ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    })
    let closing = false

    const authenticate = async (request: FastifyRequest, reply: FastifyReply) => {
        if (settings.secret !== null && !secretMatches(settings.secret, request.headers[SECRET_HEADER])) {
            return reply
                .code(401)
                .send({ error: 'Unauthorized', message: `missing or wrong ${SECRET_HEADER} header` })
        }
    }

    const receive = async (request: FastifyRequest<{ Body: WebhookBody }>, reply: FastifyReply) => {
        const started = process.hrtime.bigint()
        const results = await mapLimit(itemsOf(request.body), ITEM_CONCURRENCY, handleItem)
        for (const result of results) {
            metrics.event(result.status, result.status === 'refused' ? 'permanent' : result.reason)
        }
        const failed = results.filter((result) => result.status === 'retry').length
        const code = failed > 0 ? 503 : 200
        if (failed > 0) {
            void reply.header('retry-after', String(RETRY_AFTER_SECONDS))
            request.log.warn(
                { events: results.length, retry: failed },
                'not every event is safe: answered 503'
            )
        }
        metrics.ack(Number(process.hrtime.bigint() - started) / 1e9, code)
        return reply.code(code).send({ ok: failed === 0, results })
    }

    // While stopping, each answer closes its connection, so that no kept-alive client holds the stop up.
    app.addHook('onSend', async (_request, reply) => {
        if (closing) void reply.header('connection', 'close')
    })

    const route = { schema: { body: bodySchema }, onRequest: authenticate }
    app.post<{ Body: WebhookBody }>('/events', route, receive)
    app.post<{ Body: WebhookBody }>('/', route, receive)
    app.get('/healthz', async () => ({ ok: true }))
    app.get('/readyz', async (_request, reply) => {
        const redisOk =
            !shared.redis ||
            (await shared.redis.ping().then(
                () => true,
                () => false
            ))
        const ready = !closing && redisOk && Boolean(meta.global.settings)
        return reply.code(ready ? 200 : 503).send({ ready, redis: shared.redis ? redisOk : 'not configured' })
    })
    app.get('/metrics', async (_request, reply) =>
        reply.header('content-type', metrics.registry.contentType).send(await metrics.registry.metrics())
    )
    app.setErrorHandler((error: { statusCode?: number; message: string; code?: string }, request, reply) => {
        const code = error.statusCode && error.statusCode >= 400 ? error.statusCode : 500
        if (code >= 500) {
            request.log.error({ err: { message: error.message, code: error.code } }, 'request failed')
        } else {
            request.log.info({ code, reason: error.code }, 'bad request refused')
        }
        // Fastify's 4xx messages name the rule broken, never the value sent; a 5xx says nothing more.
        const message = code >= 500 ? 'the relay failed; the event was not acknowledged' : error.message
        return reply.code(code).send({ error: STATUS_CODES[code] ?? 'Error', message })
    })

    metrics.onScrape(async () => {
        const [queueLength, sharedUntil] = await Promise.all([
            shared.cache.llen(QUEUE_KEY),
            shared.cache.get(BACKOFF_KEY, null),
        ])
        const until = Math.max(Number(sharedUntil) || 0, meta.global.backoffUntil || 0)
        return { queueLength, backoffSeconds: Math.max(0, (until - Date.now()) / 1000) }
    })

    // The plugin's queue is read, delivered, then removed: a drain killed midway loses nothing.
    const drain = () =>
        shared.locks
            .ifFree('drain', () => runEveryMinute(meta))
            .then((result) => {
                if (result) metrics.drained(result)
                return result
            })
    const drainLoop = startDrainLoop(drain, {
        intervalMs: settings.drainIntervalMs,
        retryMs: settings.retryIntervalMs,
        logger,
    })

    return {
        app,
        logger,
        metrics,
        drain,
        async listen() {
            const url = await app.listen({ host: settings.host, port: settings.port })
            logger.info({ url, redis: durable, auth: settings.secret !== null }, 'relay listening')
            return url
        },
        async close() {
            closing = true
            await Promise.all([app.close(), drainLoop.stop()])
            if (shared.redis) await shared.redis.quit().catch(() => shared.redis?.disconnect())
            http.destroy()
            logger.info('relay stopped')
        },
    }
}
