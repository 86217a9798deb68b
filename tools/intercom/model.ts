/** The one Intercom model every stand-in uses: workspace, gates (auth, rate limit, seeded faults), routes.
 * `createIntercom(options)` answers through an in-process `fetch` (the fault campaign's fake, the replay's
 * dry run, the bench); the emulator serves the same model over HTTP.
 */
import type { FetchFn, FetchInit } from '../runtime/load-plugin'
import { seededRandom } from '../lib/random'
import { addCount } from '../lib/report'
import { randomUUID } from 'node:crypto'
import {
    acceptViolations,
    authViolations,
    EVENT_IDENTIFIERS,
    findRoute,
    isRecord,
    MAX_METADATA_KEYS,
    MAX_STRING,
    paginationOf,
    parseBody,
} from './rules'
import type { LongStringPolicy, Pagination, RouteMatch, RouteName, SearchNode, Violation } from './rules'
import { ApiError, APP_ID, STANDARD_ATTRIBUTES, Workspace } from './workspace'
import type {
    AttributeModel,
    AttributeRecord,
    ContactInput,
    DataAttribute,
    SeedContact,
    StoredCompany,
    StoredContact,
    StoredEvent,
    WorkspaceCounters,
} from './workspace'

export type Region = 'US' | 'Europe' | 'AU'
export const REGIONS: readonly Region[] = ['US', 'Europe', 'AU']

/** Every option with its default. */
const DEFAULT_OPTIONS = {
    host: '127.0.0.1', // the HTTP emulator's; only loopback addresses are accepted
    port: 0, // 0: a free port
    tokens: ['test-token'] as string[], // accepted Bearer tokens; '*' accepts any
    region: 'US' as Region, // GET /me's app.region
    /** Calls per window (Intercom: 10,000 a minute, enforced in 10 s windows). */
    rateLimit: 1666,
    windowSeconds: 10,
    errorRate: 0, // share 0..1 of requests answered 500/502/503
    latencyMs: 0, // added delay per response
    dropRate: 0, // share 0..1 of requests whose connection is closed without an answer
    /** Contacts created through POST /contacts become searchable only after this delay. */
    searchLagMs: 0,
    maxEventNames: 120,
    seed: 1, // of the deterministic PRNG used for faults
    longStrings: 'reject' as LongStringPolicy, // metadata strings over 255 characters: rejected or truncated
    clock: (): number => Date.now(), // ms (rate-limit windows, search lag, timestamps)
    recordLimit: 100_000, // recorded requests kept (the oldest go first)
    /** Every searched email or external id is a user; any custom attribute exists, of any type. */
    openWorld: false,
}

export type ResolvedOptions = typeof DEFAULT_OPTIONS
export type EmulatorOptions = Partial<ResolvedOptions> & { contacts?: SeedContact[] }

/** A stand-in for the real Intercom (replay dry run, fault audit, bench): knows everyone, never runs out. */
export const STAND_IN_OPTIONS: EmulatorOptions = {
    tokens: ['*'],
    openWorld: true,
    rateLimit: Number.MAX_SAFE_INTEGER,
    recordLimit: 1,
}

/**
 * A request as recorded: `path` without the query string; `status` 0 when the connection was dropped; `body`
 * parsed JSON, the raw text when not JSON, or null when none; `at` the clock (ms) on arrival; `headers`
 * lower-case, without `authorization`.
 */
export interface RecordedRequest {
    method: string
    path: string
    status: number
    body: unknown
    at: number
    headers: Record<string, string>
}

export interface EmulatorStats extends WorkspaceCounters {
    calls: number
    byRoute: Record<string, number>
    /** Keyed by status code, plus `dropped` for closed connections. */
    byStatus: Record<string, number>
    rateLimited: number
}

/** A request as the model reads it: header names lower-case. */
export type IntercomRequest = { method: string; url: URL; headers: Record<string, string>; raw: string }

type Reply = { status: number; body?: unknown }

/** Once through the gates: an answer (`delayed`: latency applies), or a connection closed without one. */
export type Outcome = { kind: 'reply'; reply: Reply; delayed: boolean } | { kind: 'drop' }

const FAULT_STATUSES = [500, 502, 503]

// --- options ------------------------------------------------------------------------------------------

/** Positive options, and whether each must be whole. */
const POSITIVE = { rateLimit: true, windowSeconds: false, maxEventNames: true, recordLimit: true } as const

/** Throws on values that would make the model misbehave silently; it must never listen beyond loopback. */
function validateOptions(o: ResolvedOptions): void {
    const check = (ok: boolean, message: string) => {
        if (!ok) throw new RangeError(message)
    }
    const loopback = ['127.0.0.1', '::1', 'localhost'].includes(o.host) || /^127(\.\d{1,3}){3}$/.test(o.host)
    check(loopback, `the emulator only listens on loopback, not on '${o.host}'`)
    const portOk = Number.isInteger(o.port) && o.port >= 0 && o.port <= 65535
    check(portOk, `port must be an integer 0..65535, got ${o.port}`)
    const tokensOk = Array.isArray(o.tokens) && o.tokens.every((t) => typeof t === 'string' && t !== '')
    check(tokensOk, 'tokens must be a list of non-empty strings')
    check(REGIONS.includes(o.region), `region must be one of ${REGIONS.join(', ')}`)
    for (const [name, integer] of Object.entries(POSITIVE)) {
        const value = o[name as keyof typeof POSITIVE]
        const ok = value > 0 && Number.isFinite(value) && (!integer || Number.isInteger(value))
        check(ok, `${name} must be a positive ${integer ? 'integer' : 'number'}, got ${value}`)
    }
    for (const name of ['errorRate', 'dropRate'] as const)
        check(o[name] >= 0 && o[name] <= 1, `${name} must be between 0 and 1, got ${o[name]}`)
    check(o.latencyMs >= 0 && o.searchLagMs >= 0, 'latencyMs and searchLagMs must be >= 0')
    check(['reject', 'truncate'].includes(o.longStrings), "longStrings must be 'reject' or 'truncate'")
}

/** Only the keys actually given, so that `{ port: undefined }` keeps the default. */
const definedOnly = (patch: Partial<EmulatorOptions>): Partial<ResolvedOptions> =>
    Object.fromEntries(Object.entries(patch).filter(([k, v]) => k !== 'contacts' && v !== undefined))

function emptyStats(): EmulatorStats {
    const counters = { eventsAccepted: 0, eventsDeduplicated: 0, contactsCreated: 0, contactsUpdated: 0 }
    return { calls: 0, byRoute: {}, byStatus: {}, rateLimited: 0, searches: 0, ...counters }
}

// --- routes -------------------------------------------------------------------------------------------

type RouteInput = { body: Record<string, unknown>; params: string[]; query: URLSearchParams; region: Region }

const ok = (body: unknown): Reply => ({ status: 200, body })

function me(region: Region): Reply {
    const app = { type: 'app', id_code: APP_ID, name: 'Intercom emulator', created_at: 1700000000 }
    return ok({
        type: 'admin',
        id: '991200001',
        email: 'admin@example.test',
        name: 'Emulator Admin',
        email_verified: true,
        app: { ...app, secure: false, identity_verification: false, timezone: 'UTC', region },
        avatar: { type: 'avatar', image_url: null },
        has_inbox_seat: true,
    })
}

function pageOf(contacts: StoredContact[], { perPage, offset }: Pagination): Reply {
    const page = Math.floor(offset / perPage) + 1
    const next = offset + perPage
    const total_pages = Math.ceil(contacts.length / perPage)
    const pages: Record<string, unknown> = { type: 'pages', page, per_page: perPage, total_pages }
    if (next < contacts.length)
        pages.next = { page: page + 1, starting_after: Buffer.from(String(next)).toString('base64') }
    return ok({ type: 'list', data: contacts.slice(offset, next), total_count: contacts.length, pages })
}

/** A data attribute as GET /data_attributes lists it: standard ones have no id and no dates. */
function attributeBody(attribute: DataAttribute & Partial<AttributeRecord>, custom: boolean): unknown {
    const { name, data_type, model, description = '', messenger_writable = false, created_at } = attribute
    return {
        ...(custom ? { id: attribute.id } : {}),
        type: 'data_attribute',
        name,
        full_name: custom ? `custom_attributes.${name}` : name,
        label: name,
        description,
        data_type,
        api_writable: true,
        ui_writable: false,
        messenger_writable,
        custom,
        archived: false,
        ...(custom ? { created_at, updated_at: created_at } : {}),
        model,
    }
}

function listDataAttributes(ws: Workspace, { query }: RouteInput): Reply {
    const model = query.get('model')
    if (model !== null && model !== 'contact' && model !== 'company' && model !== 'conversation') {
        throw new ApiError(400, 'parameter_invalid', 'model must be one of contact, company, conversation')
    }
    const models: AttributeModel[] = model === 'conversation' ? [] : model ? [model] : ['contact', 'company']
    const standard = models.flatMap((m) =>
        Object.entries(STANDARD_ATTRIBUTES[m]).map(([name, type]) =>
            attributeBody({ name, data_type: type, model: m }, false)
        )
    )
    const custom = models.flatMap((m) => ws.attributes.list(m).map((a) => attributeBody(a, true)))
    return ok({ type: 'list', data: [...standard, ...custom] })
}

/** Stores the first 10 metadata keys, like Intercom ("we ignore any further keys"); long strings cut. */
function trackEvent(ws: Workspace, { body }: RouteInput): Reply {
    const kind = EVENT_IDENTIFIERS.find((key) => body[key] !== undefined && body[key] !== null) ?? 'id'
    const cut = (value: unknown) =>
        typeof value === 'string' ? [...value].slice(0, MAX_STRING).join('') : value
    const metadata = Object.entries(isRecord(body.metadata) ? body.metadata : {})
        .slice(0, MAX_METADATA_KEYS)
        .map(([key, value]) => [key, cut(value)])
    ws.events.track({
        event_name: body.event_name as string,
        created_at: body.created_at as number,
        contact_id: ws.contacts.findForEvent(kind, body[kind] as string).id,
        metadata: structuredClone(Object.fromEntries(metadata)),
    })
    return { status: 202 }
}

/** Each route's answer, once its body passed the rules (so the casts hold). */
const HANDLERS: Record<RouteName, (ws: Workspace, input: RouteInput) => Reply> = {
    'GET /me': (_, { region }) => me(region),
    'POST /contacts/search': (ws, { body }) =>
        pageOf(ws.contacts.search(body.query as SearchNode), paginationOf(body.pagination) as Pagination),
    'POST /contacts': (ws, { body }) => ok(ws.contacts.create(body as ContactInput)),
    'GET /contacts/{id}': (ws, { params }) => ok(ws.contacts.get(params[0])),
    'PUT /contacts/{id}': (ws, { body, params }) => ok(ws.contacts.update(params[0], body as ContactInput)),
    'POST /contacts/{id}/companies': (ws, { body, params }) =>
        ok(ws.companies.attach(params[0], body.id as string)),
    'POST /companies': (ws, { body }) => ok(ws.companies.upsert(body)),
    'GET /data_attributes': listDataAttributes,
    'POST /data_attributes': (ws, { body }) => {
        const { name, model, data_type, description } = body as unknown as AttributeRecord
        return ok(attributeBody(ws.attributes.define({ name, model, data_type }, description ?? ''), true))
    },
    'POST /events': trackEvent,
}

// --- gates --------------------------------------------------------------------------------------------

/** Fixed windows aligned on the clock, like Intercom's 10-second windows. */
class FixedWindowLimiter {
    private windowStart = Number.NaN
    private used = 0

    constructor(private readonly options: ResolvedOptions) {}

    /** Starts a new window once the clock has left the current one; returns the window's end (ms). */
    private roll(): number {
        const windowMs = this.options.windowSeconds * 1000
        const start = Math.floor(this.options.clock() / windowMs) * windowMs
        if (start !== this.windowStart) [this.windowStart, this.used] = [start, 0]
        return start + windowMs
    }

    /** Counts one call; false when the window's budget is already spent. */
    take(): boolean {
        this.roll()
        if (this.used >= this.options.rateLimit) return false
        this.used += 1
        return true
    }

    headers(): Record<string, string> {
        const end = this.roll()
        const limit = this.options.rateLimit
        return {
            'X-RateLimit-Limit': String(limit),
            'X-RateLimit-Remaining': String(Math.max(0, limit - this.used)),
            'X-RateLimit-Reset': String(Math.ceil(end / 1000)),
        }
    }
}

function errorReply({ status, code, message }: Pick<Violation, 'status' | 'code' | 'message'>): Reply {
    return { status, body: { type: 'error.list', request_id: randomUUID(), errors: [{ code, message }] } }
}

/** An answer; `delayed`: the configured latency applies (not to a 401). */
const replied = (reply: Reply, delayed = true): Outcome => ({ kind: 'reply', reply, delayed })

function recordedBody(raw: string): unknown {
    if (raw === '') return null
    try {
        return JSON.parse(raw)
    } catch {
        return raw
    }
}

export class Intercom {
    readonly options: ResolvedOptions
    readonly workspace: Workspace
    private readonly counters = emptyStats()
    private limiter: FixedWindowLimiter
    private readonly listeners = new Set<(request: RecordedRequest) => void>()
    private readonly timers = new Set<NodeJS.Timeout>()
    private recorded: RecordedRequest[] = []
    private random: () => number

    constructor(options: EmulatorOptions = {}) {
        this.options = { ...DEFAULT_OPTIONS, ...definedOnly(options) }
        this.options.tokens = [...this.options.tokens]
        validateOptions(this.options)
        this.workspace = new Workspace(this.options, this.counters)
        this.limiter = new FixedWindowLimiter(this.options)
        this.random = seededRandom(this.options.seed)
        for (const contact of options.contacts ?? []) this.addContact(contact)
    }

    /** Answers one request as Intercom would, and counts and records it. */
    protected answer(request: IntercomRequest): Outcome {
        const { method, url, headers, raw } = request
        const at = this.options.clock()
        const found = findRoute(method, url.pathname)
        const outcome = this.decide(request, found)
        const status = outcome.kind === 'drop' ? 0 : outcome.reply.status
        this.counters.calls += 1
        addCount(this.counters.byRoute, found?.name ?? 'unknown')
        addCount(this.counters.byStatus, status === 0 ? 'dropped' : String(status))
        const kept = Object.fromEntries(Object.entries(headers).filter(([name]) => name !== 'authorization'))
        const recorded = { method, path: url.pathname, status, body: recordedBody(raw), at, headers: kept }
        this.recorded.push(recorded)
        if (this.recorded.length > this.options.recordLimit) this.recorded.shift()
        for (const listener of this.listeners) listener(recorded)
        return outcome
    }

    /** The gates in order: auth, then the rate limit, then injected faults, then the request itself. */
    private decide(request: IntercomRequest, found: RouteMatch | undefined): Outcome {
        const [unauthorized] = authViolations(request.headers, this.options.tokens)
        if (unauthorized) return replied(errorReply(unauthorized), false)
        if (!this.limiter.take()) {
            this.counters.rateLimited += 1
            const message = `Exceeded rate limit of ${this.options.rateLimit} in ${this.options.windowSeconds}_seconds`
            return replied(errorReply({ status: 429, code: 'rate_limit_exceeded', message }))
        }
        // Three draws per request whatever the rates, so a seed replays the same sequence when rates change.
        const [dropDraw, errorDraw, statusDraw] = [this.random(), this.random(), this.random()]
        if (dropDraw < this.options.dropRate) return { kind: 'drop' }
        if (errorDraw < this.options.errorRate) {
            const status = FAULT_STATUSES[Math.floor(statusDraw * FAULT_STATUSES.length)]
            const message = 'Sorry, the API service is temporarily unavailable'
            return replied(errorReply({ status, code: 'service_unavailable', message }))
        }
        return replied(this.dispatch(request, found))
    }

    private dispatch({ method, url, headers, raw }: IntercomRequest, found: RouteMatch | undefined): Reply {
        const { body, problems } = parseBody(raw, headers)
        const enforced = found?.check?.(body, this.options.longStrings) ?? []
        const refusal = [...acceptViolations(headers), ...problems, ...enforced].find((v) => !v.auditOnly)
        if (refusal) return errorReply(refusal)
        const message = `Resource Not Found: ${method} ${url.pathname}`
        if (!found) return errorReply({ status: 404, code: 'not_found', message })
        try {
            const input = { body, params: found.params, query: url.searchParams, region: this.options.region }
            return HANDLERS[found.name](this.workspace, input)
        } catch (error) {
            if (error instanceof ApiError) return errorReply(error)
            throw error
        }
    }

    /** A reply as written on the wire, once its latency is over: JSON text ('' for none) and headers. */
    protected wire({ status, body }: Reply) {
        const text = body === undefined ? '' : JSON.stringify(body)
        const headers = { 'Content-Type': 'application/json; charset=utf-8', ...this.limiter.headers() }
        return { status, text, headers }
    }

    /** Waits out the latency of an outcome that has one; stop() cancels the wait. */
    protected async latency(outcome: Outcome): Promise<void> {
        if (outcome.kind === 'drop' || !outcome.delayed || this.options.latencyMs <= 0) return
        await new Promise<void>((resolve) => {
            const timer = setTimeout(() => {
                this.timers.delete(timer)
                resolve()
            }, this.options.latencyMs)
            this.timers.add(timer)
        })
    }

    protected stop(): void {
        for (const timer of this.timers) clearTimeout(timer)
        this.timers.clear()
    }

    /** The model without a socket: a dropped connection rejects like undici's `fetch failed`. */
    readonly fetch: FetchFn = async (input, init: FetchInit = {}) => {
        const headers = Object.fromEntries(
            new Headers(init.headers as ConstructorParameters<typeof Headers>[0])
        )
        const method = (init.method ?? 'GET').toUpperCase()
        const outcome = this.answer({ method, url: new URL(String(input)), headers, raw: init.body ?? '' })
        if (outcome.kind === 'drop') throw new TypeError('fetch failed: connection closed without an answer')
        await this.latency(outcome)
        const { status, text, headers: sent } = this.wire(outcome.reply)
        return new Response(text || null, { status, headers: sent })
    }

    /** Change faults, tokens, limits… mid-run (e.g. revoke the token: 401 from now on). */
    configure(patch: Partial<EmulatorOptions>): void {
        const next = { ...this.options, ...definedOnly(patch) }
        if (next.host !== this.options.host || next.port !== this.options.port) {
            throw new Error('host and port cannot change while the emulator is running')
        }
        validateOptions(next)
        Object.assign(this.options, next)
        if (patch.seed !== undefined) this.random = seededRandom(patch.seed)
        for (const contact of patch.contacts ?? []) this.addContact(contact)
    }

    addContact = (contact: SeedContact): { id: string } => this.workspace.contacts.seed(contact)
    /** Declare a custom data attribute, as if created in Intercom's settings. */
    addDataAttribute = (attribute: DataAttribute): void => void this.workspace.attributes.define(attribute)
    contacts = (): StoredContact[] =>
        this.workspace.contacts.all().map((c) => this.workspace.contacts.toContact(c))
    companies = (): StoredCompany[] => this.workspace.companies.all()
    events = (): StoredEvent[] => this.workspace.events.all()
    requests = (): RecordedRequest[] => this.recorded.map((request) => structuredClone(request))
    stats = (): EmulatorStats => structuredClone(this.counters)

    /** Custom data attributes only (standard ones never matter for validation). */
    dataAttributes = (): DataAttribute[] =>
        this.workspace.attributes.list().map(({ name, data_type, model }) => ({ name, data_type, model }))

    /** Called after each request is answered (or dropped); returns an unsubscribe function. */
    onRequest(listener: (request: RecordedRequest) => void): () => void {
        this.listeners.add(listener)
        return () => this.listeners.delete(listener)
    }

    /** Clears recorded requests, events, stats, rate-limit windows; keeps contacts, companies, attributes. */
    reset(): void {
        this.recorded = []
        Object.assign(this.counters, emptyStats())
        this.workspace.events.clear()
        this.limiter = new FixedWindowLimiter(this.options)
        this.random = seededRandom(this.options.seed)
    }
}

/** The model in the process: no socket, no port; `fetch` answers as the emulator would. */
export function createIntercom(options: EmulatorOptions = {}): Intercom {
    return new Intercom(options)
}
