/**
 * A local emulator of Intercom's REST API 2.11, for end-to-end tests, the demo run, the benchmark and the
 * fault campaign. It implements only what the plugin and its tools call, and it is deliberately strict:
 * anything real Intercom would refuse is refused here too, and where Intercom's documentation is silent the
 * emulator picks the stricter reading (documented next to each rule) so that a sloppy caller fails in tests
 * rather than in production.
 *
 * Spec: intercom-openapi-2.11.yaml (shared with the project),
 * https://developers.intercom.com/docs/references/2.11/rest-api
 */
import { seededRandom } from '../lib/random'
import { randomUUID } from 'node:crypto'
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http'
import { AddressInfo } from 'node:net'

// ---------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------

export type Region = 'US' | 'Europe' | 'AU'
export type ContactRole = 'user' | 'lead'
export type AttributeModel = 'contact' | 'company'
export type DataType = 'string' | 'integer' | 'float' | 'boolean' | 'date' | 'datetime'
/** What to do with a metadata string over 255 characters: Intercom documents the limit, not the outcome. */
export type LongStringPolicy = 'reject' | 'truncate'

export interface SeedContact {
    id?: string
    email: string
    role: ContactRole
    external_id?: string
    name?: string
    /** Unix seconds. */
    updated_at?: number
    custom_attributes?: Record<string, unknown>
}

export interface EmulatorOptions {
    /** Default '127.0.0.1'; only loopback addresses are accepted. */
    host?: string
    /** Default 0: a free port. */
    port?: number
    /** Accepted Bearer tokens, default ['test-token']. */
    tokens?: string[]
    /** Returned by GET /me as app.region, default 'US'. */
    region?: Region
    /** Calls per window, default 1666 (Intercom: 10,000 a minute, enforced in 10 s windows). */
    rateLimit?: number
    /** Default 10. */
    windowSeconds?: number
    /** Share 0..1 of requests answered 500/502/503, default 0. */
    errorRate?: number
    /** Added delay per response, default 0. */
    latencyMs?: number
    /** Share 0..1 of requests whose socket is destroyed without an answer, default 0. */
    dropRate?: number
    /** Contacts created through POST /contacts become searchable only after this delay, default 0. */
    searchLagMs?: number
    /** Default 120. */
    maxEventNames?: number
    contacts?: SeedContact[]
    /** Seed of the deterministic PRNG used for faults, default 1. */
    seed?: number
    /** Addition: metadata strings over 255 characters are rejected (default) or truncated. */
    longStrings?: LongStringPolicy
    /** Addition: the clock in ms (rate-limit windows, search lag, timestamps); default Date.now. */
    clock?: () => number
    /** Addition: how many recorded requests are kept (the oldest go first), default 100,000. */
    recordLimit?: number
}

export interface RecordedRequest {
    method: string
    /** Path without the query string. */
    path: string
    /** HTTP status answered; 0 when the socket was dropped. */
    status: number
    /** Parsed JSON body, the raw text when it was not JSON, or null when there was none. */
    body: unknown
    /** Clock time (ms) when the request arrived. */
    at: number
    /** Addition: request headers, lower-case, without `authorization`. */
    headers: Record<string, string>
}

export interface StoredEvent {
    event_name: string
    created_at: number
    contact_id: string
    metadata: Record<string, unknown>
    /** How many POSTs carried it: more than 1 means Intercom deduplicated retries. */
    received: number
}

export interface EmulatorStats {
    calls: number
    byRoute: Record<string, number>
    /** Keyed by status code, plus `dropped` for destroyed sockets. */
    byStatus: Record<string, number>
    rateLimited: number
    eventsAccepted: number
    eventsDeduplicated: number
    contactsCreated: number
    contactsUpdated: number
    searches: number
}

export interface CompanyRef {
    type: 'company'
    id: string
    url: string
}

export interface StoredContact {
    type: 'contact'
    id: string
    workspace_id: string
    external_id: string | null
    role: ContactRole
    email: string | null
    name: string | null
    phone: string | null
    created_at: number
    updated_at: number
    signed_up_at: number | null
    last_seen_at: number | null
    custom_attributes: Record<string, unknown>
    companies: { type: 'list'; data: CompanyRef[]; url: string; total_count: number; has_more: boolean }
}

export interface StoredCompany {
    type: 'company'
    id: string
    company_id: string
    app_id: string
    name: string | null
    remote_created_at: number | null
    created_at: number
    updated_at: number
    monthly_spend: number
    session_count: number
    user_count: number
    size: number | null
    website: string | null
    industry: string | null
    plan: { type: 'plan'; id: string; name: string } | Record<string, never>
    custom_attributes: Record<string, unknown>
}

export interface DataAttribute {
    name: string
    data_type: DataType
    model: AttributeModel
}

export type ResolvedOptions = Required<Omit<EmulatorOptions, 'contacts'>>

export interface Emulator {
    url: string
    port: number
    options: ResolvedOptions
    /** Change faults, tokens, limits… mid-run (e.g. revoke the token: 401 from now on). */
    configure(patch: Partial<EmulatorOptions>): void
    addContact(c: SeedContact): { id: string }
    /** Addition: declare a custom data attribute, as if created in Intercom's settings. */
    addDataAttribute(attribute: DataAttribute): void
    contacts(): StoredContact[]
    companies(): StoredCompany[]
    events(): StoredEvent[]
    requests(): RecordedRequest[]
    /** Custom data attributes only (standard ones never matter for validation). */
    dataAttributes(): DataAttribute[]
    stats(): EmulatorStats
    /** Addition: called after each request is answered (or dropped); returns an unsubscribe function. */
    onRequest(listener: (request: RecordedRequest) => void): () => void
    /** Clears recorded requests, events, stats, rate-limit windows; keeps contacts, companies, attributes. */
    reset(): void
    close(): Promise<void>
}

// ---------------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------------

const DEFAULT_OPTIONS: ResolvedOptions = {
    host: '127.0.0.1',
    port: 0,
    tokens: ['test-token'],
    region: 'US',
    rateLimit: 1666,
    windowSeconds: 10,
    errorRate: 0,
    latencyMs: 0,
    dropRate: 0,
    searchLagMs: 0,
    maxEventNames: 120,
    seed: 1,
    longStrings: 'reject',
    clock: () => Date.now(),
    recordLimit: 100_000,
}

const APP_ID = 'emulator-app'
export const REGIONS: readonly Region[] = ['US', 'Europe', 'AU']
const ROLES: readonly ContactRole[] = ['user', 'lead']
const DATA_TYPES: readonly DataType[] = ['string', 'integer', 'float', 'boolean', 'date', 'datetime']
/** Intercom keeps the first 10 metadata keys of an event and documents strings up to 255 characters. */
const MAX_METADATA_KEYS = 10
const MAX_METADATA_STRING = 255
/** Above this, a created_at is surely milliseconds (year 2286 in seconds), a classic connector bug. */
const MAX_UNIX_SECONDS = 9_999_999_999
const DEFAULT_SEARCH_PER_PAGE = 50
const MAX_SEARCH_PER_PAGE = 150
/** Intercom: "a limit of max 15 filters for each AND or OR group". */
const MAX_FILTERS_PER_GROUP = 15
const FAULT_STATUSES = [500, 502, 503]
const LOOPBACK_HOSTS = new Set(['127.0.0.1', '::1', 'localhost'])

/** Some names Intercom reserves for its own attributes; GET /data_attributes lists them as not custom. */
const STANDARD_ATTRIBUTES: Record<AttributeModel, Record<string, DataType>> = {
    contact: {
        name: 'string',
        email: 'string',
        phone: 'string',
        external_id: 'string',
        role: 'string',
        created_at: 'date',
        updated_at: 'date',
        signed_up_at: 'date',
        last_seen_at: 'date',
        owner_id: 'integer',
        unsubscribed_from_emails: 'boolean',
    },
    company: {
        name: 'string',
        company_id: 'string',
        website: 'string',
        industry: 'string',
        size: 'integer',
        monthly_spend: 'float',
        remote_created_at: 'date',
        user_count: 'integer',
        session_count: 'integer',
    },
}

/**
 * Body keys each route accepts. Intercom answers "bad 'x' parameter" to unknown ones (POST /companies in the
 * spec); the emulator does so on every route, so that a misspelt field fails a test instead of being ignored.
 * Search accepts `sort` but ignores it: results come oldest first.
 */
const keySet = (names: string) => new Set(names.split(' '))
const EVENT_KEYS = keySet('event_name created_at id user_id email metadata')
const CONTACT_KEYS = keySet(
    'role external_id email phone name avatar signed_up_at last_seen_at owner_id ' +
        'unsubscribed_from_emails custom_attributes'
)
const COMPANY_KEYS = keySet(
    'company_id name plan size website industry custom_attributes remote_created_at monthly_spend'
)
const DATA_ATTRIBUTE_KEYS = keySet('name model data_type description options messenger_writable')
const SEARCH_KEYS = keySet('query pagination sort')
const EVENT_IDENTIFIERS = ['id', 'user_id', 'email'] as const
type EventIdentifierKind = (typeof EVENT_IDENTIFIERS)[number]

// ---------------------------------------------------------------------------------------------------
// Errors and small helpers
// ---------------------------------------------------------------------------------------------------

type JsonObject = Record<string, unknown>

/** A refusal with Intercom's status and code; handlers throw it, the dispatcher turns it into a body. */
class ApiError extends Error {
    constructor(
        readonly status: number,
        readonly code: string,
        message: string
    ) {
        super(message)
    }
}

const invalid = (message: string) => new ApiError(400, 'parameter_invalid', message)
const missing = (name: string) => new ApiError(400, 'parameter_not_found', `${name} is required`)
const userNotFound = () => new ApiError(404, 'not_found', 'User Not Found')

function errorList(code: string, message: string): JsonObject {
    return { type: 'error.list', request_id: randomUUID(), errors: [{ code, message }] }
}

function isRecord(value: unknown): value is JsonObject {
    return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function isInteger(value: unknown): value is number {
    return typeof value === 'number' && Number.isSafeInteger(value)
}

function nowSeconds(options: ResolvedOptions): number {
    return Math.floor(options.clock() / 1000)
}

function rejectUnknownKeys(body: JsonObject, allowed: ReadonlySet<string>): void {
    const unknown = Object.keys(body).find((key) => !allowed.has(key))
    if (unknown !== undefined) {
        throw new ApiError(400, 'bad_request', `bad '${unknown}' parameter`)
    }
}

/** undefined = not sent, null = sent as null (clears the field), else a checked string. */
function readString(body: JsonObject, key: string): string | null | undefined {
    const value = body[key]
    if (value === undefined || value === null) return value
    if (typeof value !== 'string') throw invalid(`${key} must be a string`)
    return value
}

function readInteger(body: JsonObject, key: string): number | null | undefined {
    const value = body[key]
    if (value === undefined || value === null) return value
    if (!isInteger(value)) throw invalid(`${key} must be an integer`)
    return value
}

function readObject(body: JsonObject, key: string): JsonObject | undefined {
    const value = body[key]
    if (value === undefined || value === null) return undefined
    if (!isRecord(value)) throw invalid(`${key} must be an object`)
    return value
}

/** Counts code points, as a person reading "255 characters" would, not UTF-16 units. */
function charLength(text: string): number {
    return [...text].length
}

function emptyStats(): EmulatorStats {
    return {
        calls: 0,
        byRoute: {},
        byStatus: {},
        rateLimited: 0,
        eventsAccepted: 0,
        eventsDeduplicated: 0,
        contactsCreated: 0,
        contactsUpdated: 0,
        searches: 0,
    }
}

function increment(counter: Record<string, number>, key: string): void {
    counter[key] = (counter[key] ?? 0) + 1
}

// ---------------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------------

function checkShare(name: string, value: number): void {
    if (!(value >= 0 && value <= 1)) throw new RangeError(`${name} must be between 0 and 1, got ${value}`)
}

function checkPositive(name: string, value: number, integer: boolean): void {
    if (!(value > 0) || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
        throw new RangeError(`${name} must be a positive ${integer ? 'integer' : 'number'}, got ${value}`)
    }
}

/** Throws on values that would make the emulator misbehave silently; it must never listen beyond loopback. */
function validateOptions(options: ResolvedOptions): void {
    if (!LOOPBACK_HOSTS.has(options.host) && !/^127(\.\d{1,3}){3}$/.test(options.host)) {
        throw new RangeError(`the emulator only listens on loopback, not on '${options.host}'`)
    }
    if (!isInteger(options.port) || options.port < 0 || options.port > 65535) {
        throw new RangeError(`port must be an integer 0..65535, got ${options.port}`)
    }
    if (!Array.isArray(options.tokens) || options.tokens.some((t) => typeof t !== 'string' || t === '')) {
        throw new RangeError('tokens must be a list of non-empty strings')
    }
    if (!REGIONS.includes(options.region)) throw new RangeError(`region must be one of ${REGIONS.join(', ')}`)
    checkPositive('rateLimit', options.rateLimit, true)
    checkPositive('windowSeconds', options.windowSeconds, false)
    checkPositive('maxEventNames', options.maxEventNames, true)
    checkPositive('recordLimit', options.recordLimit, true)
    checkShare('errorRate', options.errorRate)
    checkShare('dropRate', options.dropRate)
    if (!(options.latencyMs >= 0) || !(options.searchLagMs >= 0)) {
        throw new RangeError('latencyMs and searchLagMs must be >= 0')
    }
    if (options.longStrings !== 'reject' && options.longStrings !== 'truncate') {
        throw new RangeError("longStrings must be 'reject' or 'truncate'")
    }
}

/** Spreads only the keys actually given, so `{ port: undefined }` keeps the default. */
function definedOnly(patch: Partial<EmulatorOptions>): Partial<ResolvedOptions> {
    return Object.fromEntries(
        Object.entries(patch).filter(([key, value]) => key !== 'contacts' && value !== undefined)
    )
}

// ---------------------------------------------------------------------------------------------------
// Workspace: the data and Intercom's rules about it
// ---------------------------------------------------------------------------------------------------

interface ContactRecord {
    id: string
    role: ContactRole
    email: string | null
    external_id: string | null
    name: string | null
    phone: string | null
    created_at: number
    updated_at: number
    signed_up_at: number | null
    last_seen_at: number | null
    custom_attributes: JsonObject
    companyIds: string[]
    /** Clock ms from which search returns it: Intercom's search lags new contacts. */
    searchableAt: number
    /** Creation order, so that lookups through an index still list the oldest first. */
    seq: number
}

interface ContactInput {
    role?: ContactRole
    email?: string | null
    external_id?: string | null
    name?: string | null
    phone?: string | null
    signed_up_at?: number | null
    last_seen_at?: number | null
    custom_attributes?: JsonObject
}

interface AttributeRecord extends DataAttribute {
    id: number
    description: string
    messenger_writable: boolean
    created_at: number
}

interface EventDraft {
    event_name: string
    created_at: number
    identifier: { kind: EventIdentifierKind; value: string }
    metadata: JsonObject
}

/** Contacts listed under a key (lower-case email, external id): emails are not unique in Intercom. */
class ContactIndex {
    private readonly lists = new Map<string, ContactRecord[]>()

    constructor(private readonly keyOf: (record: ContactRecord) => string | null) {}

    add(record: ContactRecord): void {
        const key = this.keyOf(record)
        if (key === null) return
        const list = this.lists.get(key)
        if (list) list.push(record)
        else this.lists.set(key, [record])
    }

    remove(record: ContactRecord): void {
        const key = this.keyOf(record)
        if (key === null) return
        const rest = this.get(key).filter((other) => other !== record)
        if (rest.length > 0) this.lists.set(key, rest)
        else this.lists.delete(key)
    }

    get(key: string): ContactRecord[] {
        return this.lists.get(key) ?? []
    }
}

/** Contacts by id, by email and by external id: a benchmark may seed many, and must not measure a scan. */
class ContactStore {
    private readonly byId = new Map<string, ContactRecord>()
    private readonly byEmail = new ContactIndex((c) => (c.email ? c.email.toLowerCase() : null))
    private readonly byExternalId = new ContactIndex((c) => c.external_id || null)

    get(id: string): ContactRecord | undefined {
        return this.byId.get(id)
    }

    all(): ContactRecord[] {
        return [...this.byId.values()]
    }

    withEmail(email: string): ContactRecord[] {
        return this.byEmail.get(email.toLowerCase())
    }

    withExternalId(externalId: string): ContactRecord[] {
        return this.byExternalId.get(externalId)
    }

    insert(record: ContactRecord): void {
        this.byId.set(record.id, record)
        this.byEmail.add(record)
        this.byExternalId.add(record)
    }

    /** Applies a change and re-indexes the record under its new email and external id. */
    update(record: ContactRecord, change: Partial<ContactRecord>): void {
        this.byEmail.remove(record)
        this.byExternalId.remove(record)
        Object.assign(record, change)
        this.byEmail.add(record)
        this.byExternalId.add(record)
    }
}

class Workspace {
    private readonly contactStore = new ContactStore()
    private readonly companiesById = new Map<string, StoredCompany>()
    private readonly companyByRemoteId = new Map<string, string>()
    /** By name: Intercom refuses a name in both models ("You already have 'x' in your company data"). */
    private readonly attributes = new Map<string, AttributeRecord>()
    private readonly eventsByKey = new Map<string, StoredEvent>()
    private readonly eventNames = new Set<string>()
    private idCounter = 0
    private seqCounter = 0
    private attributeCounter = 0

    constructor(
        readonly options: ResolvedOptions,
        readonly stats: EmulatorStats
    ) {}

    /** 24 hex digits, like Intercom's ids; sequential so that runs are reproducible. */
    private newId(): string {
        let id: string
        do {
            this.idCounter += 1
            id = `65${this.idCounter.toString(16).padStart(22, '0')}`
        } while (this.contactStore.get(id) || this.companiesById.has(id)) // a seed may have taken it
        return id
    }

    private nextSeq(): number {
        this.seqCounter += 1
        return this.seqCounter
    }

    clearEvents(): void {
        this.eventsByKey.clear()
        this.eventNames.clear()
    }

    // --- contacts -----------------------------------------------------------------------------------

    /** Seeds existed before the run: searchable at once, duplicate emails allowed (old data has them). */
    seedContact(seed: SeedContact): { id: string } {
        if (seed.id !== undefined && this.contactStore.get(seed.id)) {
            throw new Error(`a contact with id ${seed.id} already exists`)
        }
        if (!ROLES.includes(seed.role)) throw new Error(`seed contact role must be user or lead`)
        const customAttributes = seed.custom_attributes ?? {}
        for (const [name, value] of Object.entries(customAttributes)) {
            if (!this.attributes.has(name)) {
                this.defineAttribute({ name, model: 'contact', data_type: inferDataType(value) })
            }
        }
        this.checkCustomAttributes('contact', customAttributes)
        const now = nowSeconds(this.options)
        const record: ContactRecord = {
            id: seed.id ?? this.newId(),
            role: seed.role,
            email: seed.email,
            external_id: seed.external_id ?? null,
            name: seed.name ?? null,
            phone: null,
            created_at: seed.updated_at ?? now,
            updated_at: seed.updated_at ?? now,
            signed_up_at: seed.role === 'user' ? (seed.updated_at ?? now) : null,
            last_seen_at: null,
            custom_attributes: { ...customAttributes },
            companyIds: [],
            searchableAt: 0,
            seq: this.nextSeq(),
        }
        this.contactStore.insert(record)
        return { id: record.id }
    }

    createContact(input: ContactInput): StoredContact {
        const role = input.role ?? 'user'
        const candidate = { role, email: input.email ?? null, external_id: input.external_id ?? null }
        this.checkIdentity(candidate, undefined)
        this.checkCustomAttributes('contact', input.custom_attributes ?? {})
        const now = nowSeconds(this.options)
        const record: ContactRecord = {
            ...candidate,
            id: this.newId(),
            name: input.name ?? null,
            phone: input.phone ?? null,
            created_at: now,
            updated_at: now,
            signed_up_at: input.signed_up_at ?? null,
            last_seen_at: input.last_seen_at ?? null,
            custom_attributes: { ...input.custom_attributes },
            companyIds: [],
            searchableAt: this.options.clock() + this.options.searchLagMs,
            seq: this.nextSeq(),
        }
        this.contactStore.insert(record)
        this.stats.contactsCreated += 1
        return this.toContact(record)
    }

    updateContact(id: string, input: ContactInput): StoredContact {
        const record = this.contactStore.get(id)
        if (!record) throw userNotFound()
        const role = input.role ?? record.role
        const email = input.email === undefined ? record.email : input.email
        const externalId = input.external_id === undefined ? record.external_id : input.external_id
        this.checkIdentity({ role, email, external_id: externalId }, id)
        this.checkCustomAttributes('contact', input.custom_attributes ?? {})
        this.contactStore.update(record, {
            role,
            email,
            external_id: externalId,
            name: input.name === undefined ? record.name : input.name,
            phone: input.phone === undefined ? record.phone : input.phone,
            signed_up_at: input.signed_up_at === undefined ? record.signed_up_at : input.signed_up_at,
            last_seen_at: input.last_seen_at === undefined ? record.last_seen_at : input.last_seen_at,
            // Intercom merges custom attributes: keys not sent keep their value.
            custom_attributes: { ...record.custom_attributes, ...input.custom_attributes },
            updated_at: nowSeconds(this.options),
        })
        this.stats.contactsUpdated += 1
        return this.toContact(record)
    }

    getContact(id: string): StoredContact {
        const record = this.contactStore.get(id)
        if (!record) throw userNotFound()
        return this.toContact(record)
    }

    /** A user needs an email or an external_id; emails are unique per role, external ids across roles. */
    private checkIdentity(
        c: Pick<ContactRecord, 'role' | 'email' | 'external_id'>,
        selfId: string | undefined
    ): void {
        if (c.role === 'user' && !c.email && !c.external_id) {
            throw invalid('A user contact needs an email or an external_id')
        }
        if (c.email && !/^[^\s@]+@[^\s@]+$/.test(c.email)) throw invalid('Invalid email address')
        const sameEmail = c.email ? this.contactStore.withEmail(c.email).filter((o) => o.role === c.role) : []
        const sameExternalId = c.external_id ? this.contactStore.withExternalId(c.external_id) : []
        const conflict = [...sameEmail, ...sameExternalId].find((other) => other.id !== selfId)
        if (conflict) {
            throw new ApiError(
                409,
                'conflict',
                `A contact matching those details already exists with id=${conflict.id}`
            )
        }
    }

    /** Every match past its search lag, oldest first: no preference between users and leads. */
    search(query: SearchNode): StoredContact[] {
        const now = this.options.clock()
        this.stats.searches += 1
        return this.candidates(query)
            .filter((record) => record.searchableAt <= now && matches(record, query))
            .sort((a, b) => a.seq - b.seq)
            .map((record) => this.toContact(record))
    }

    /** A superset of the matches: through an index for the common `field = value` query, else everyone. */
    private candidates(query: SearchNode): ContactRecord[] {
        if (isGroup(query) || query.operator !== '=' || typeof query.value !== 'string') {
            return this.contactStore.all()
        }
        switch (query.field) {
            case 'email':
                return this.contactStore.withEmail(query.value)
            case 'external_id':
                return this.contactStore.withExternalId(query.value)
            case 'id':
                return [this.contactStore.get(query.value)].filter((c): c is ContactRecord => c !== undefined)
            default:
                return this.contactStore.all()
        }
    }

    /** How POST /events finds its contact: `email` and `user_id` only ever designate users. */
    findEventContact(kind: EventIdentifierKind, value: string): ContactRecord {
        const isUser = (c: ContactRecord) => c.role === 'user'
        const found =
            kind === 'id'
                ? this.contactStore.get(value)
                : kind === 'user_id'
                  ? this.contactStore.withExternalId(value).find(isUser)
                  : this.contactStore.withEmail(value).find(isUser)
        if (!found) throw userNotFound()
        return found
    }

    private toContact(record: ContactRecord): StoredContact {
        const url = `/contacts/${record.id}/companies`
        return {
            type: 'contact',
            id: record.id,
            workspace_id: APP_ID,
            external_id: record.external_id,
            role: record.role,
            email: record.email,
            name: record.name,
            phone: record.phone,
            created_at: record.created_at,
            updated_at: record.updated_at,
            signed_up_at: record.signed_up_at,
            last_seen_at: record.last_seen_at,
            custom_attributes: structuredClone(record.custom_attributes),
            companies: {
                type: 'list',
                data: record.companyIds.map((id) => ({ type: 'company', id, url: `/companies/${id}` })),
                url,
                total_count: record.companyIds.length,
                has_more: false,
            },
        }
    }

    allContacts(): StoredContact[] {
        return this.contactStore.all().map((record) => this.toContact(record))
    }

    // --- data attributes ----------------------------------------------------------------------------

    defineAttribute(attribute: DataAttribute, description = ''): AttributeRecord {
        const existing = this.attributes.get(attribute.name)
        if (existing || isStandardAttribute(attribute.model, attribute.name)) {
            const where = existing?.model ?? attribute.model
            throw invalid(
                `You already have '${attribute.name}' in your ${modelLabel(where)} data. ` +
                    `To save this as new ${modelLabel(attribute.model)} data, use a different name.`
            )
        }
        this.attributeCounter += 1
        const record: AttributeRecord = {
            ...attribute,
            id: this.attributeCounter,
            description,
            messenger_writable: false,
            created_at: nowSeconds(this.options),
        }
        this.attributes.set(attribute.name, record)
        return record
    }

    customAttributes(model?: AttributeModel): AttributeRecord[] {
        return [...this.attributes.values()].filter((a) => model === undefined || a.model === model)
    }

    /**
     * Contacts: each key must be an existing custom attribute of the model, with a value of its type (null
     * clears it). Intercom's create/update contact endpoints never create attributes on the fly.
     */
    checkCustomAttributes(model: AttributeModel, values: JsonObject): void {
        for (const [name, value] of Object.entries(values)) {
            const attribute = this.attributes.get(name)
            if (isStandardAttribute(model, name)) {
                throw invalid(
                    `'${name}' is a standard ${model} attribute, not a custom one: send it as a top-level field.`
                )
            }
            if (!attribute || attribute.model !== model) {
                throw invalid(`Custom attribute '${name}' does not exist`)
            }
            if (value !== null && !fitsDataType(attribute.data_type, value)) {
                throw invalid(`Custom attribute '${name}' must be of type ${attribute.data_type}`)
            }
        }
    }

    // --- companies ----------------------------------------------------------------------------------

    upsertCompany(body: JsonObject): StoredCompany {
        const input = parseCompanyInput(body)
        // The companies endpoint stores "any other data about the company": unknown keys become attributes.
        for (const [name, value] of Object.entries(input.custom_attributes ?? {})) {
            if (!this.attributes.has(name) && !isStandardAttribute('company', name)) {
                this.defineAttribute({ name, model: 'company', data_type: inferDataType(value) })
            }
        }
        this.checkCustomAttributes('company', input.custom_attributes ?? {})
        const now = nowSeconds(this.options)
        const knownId = this.companyByRemoteId.get(input.company_id)
        const company = knownId ? this.companiesById.get(knownId) : undefined
        const target = company ?? this.newCompany(input.company_id, now)
        applyCompanyInput(target, input, now)
        return structuredClone(target)
    }

    private newCompany(companyId: string, now: number): StoredCompany {
        const company: StoredCompany = {
            type: 'company',
            id: this.newId(),
            company_id: companyId,
            app_id: APP_ID,
            name: null,
            remote_created_at: null,
            created_at: now,
            updated_at: now,
            monthly_spend: 0,
            session_count: 0,
            user_count: 0,
            size: null,
            website: null,
            industry: null,
            plan: {},
            custom_attributes: {},
        }
        this.companiesById.set(company.id, company)
        this.companyByRemoteId.set(companyId, company.id)
        return company
    }

    attachCompany(contactId: string, companyId: string): StoredCompany {
        const contact = this.contactStore.get(contactId)
        if (!contact) throw userNotFound()
        const company = this.companiesById.get(companyId)
        if (!company) throw new ApiError(404, 'company_not_found', 'Company Not Found')
        if (!contact.companyIds.includes(company.id)) {
            contact.companyIds.push(company.id)
            company.user_count += 1
        }
        return structuredClone(company)
    }

    allCompanies(): StoredCompany[] {
        return [...this.companiesById.values()].map((company) => structuredClone(company))
    }

    // --- events -------------------------------------------------------------------------------------

    /** Dedup on contact + name + created_at like Intercom: a repeat is accepted but not stored twice. */
    trackEvent(draft: EventDraft): void {
        const contact = this.findEventContact(draft.identifier.kind, draft.identifier.value)
        const key = JSON.stringify([contact.id, draft.event_name, draft.created_at])
        const existing = this.eventsByKey.get(key)
        if (existing) {
            existing.received += 1
            this.stats.eventsDeduplicated += 1
            return
        }
        if (!this.eventNames.has(draft.event_name) && this.eventNames.size >= this.options.maxEventNames) {
            throw new ApiError(
                422,
                'parameter_invalid',
                `Cannot have more than ${this.options.maxEventNames} active event names`
            )
        }
        this.eventNames.add(draft.event_name)
        this.eventsByKey.set(key, {
            event_name: draft.event_name,
            created_at: draft.created_at,
            contact_id: contact.id,
            metadata: draft.metadata,
            received: 1,
        })
        this.stats.eventsAccepted += 1
    }

    allEvents(): StoredEvent[] {
        return [...this.eventsByKey.values()].map((event) => structuredClone(event))
    }
}

function isStandardAttribute(model: AttributeModel, name: string): boolean {
    return Object.prototype.hasOwnProperty.call(STANDARD_ATTRIBUTES[model], name)
}

function modelLabel(model: AttributeModel): string {
    return model === 'contact' ? 'people' : 'company'
}

function inferDataType(value: unknown): DataType {
    if (typeof value === 'boolean') return 'boolean'
    if (isInteger(value)) return 'integer'
    if (typeof value === 'number') return 'float'
    if (typeof value === 'string' || value === null) return 'string'
    throw invalid('Custom attribute values must be strings, numbers or booleans')
}

/** Dates are Unix seconds here; a string date is a caller bug worth surfacing. */
function fitsDataType(type: DataType, value: unknown): boolean {
    switch (type) {
        case 'string':
            return typeof value === 'string'
        case 'integer':
        case 'date':
        case 'datetime':
            return isInteger(value)
        case 'float':
            return typeof value === 'number' && Number.isFinite(value)
        case 'boolean':
            return typeof value === 'boolean'
    }
}

// ---------------------------------------------------------------------------------------------------
// Request parsing: contacts, companies, events, search
// ---------------------------------------------------------------------------------------------------

function parseContactInput(body: JsonObject): ContactInput {
    rejectUnknownKeys(body, CONTACT_KEYS)
    const role = body.role
    if (role !== undefined && !ROLES.includes(role as ContactRole)) {
        throw invalid("role must be either 'user' or 'lead'")
    }
    // Read (and so type-checked) but not stored: nothing in this project reads them back.
    readString(body, 'avatar')
    readInteger(body, 'owner_id')
    if (body.unsubscribed_from_emails !== undefined && typeof body.unsubscribed_from_emails !== 'boolean') {
        throw invalid('unsubscribed_from_emails must be a boolean')
    }
    return {
        role: role as ContactRole | undefined,
        email: readString(body, 'email'),
        external_id: readString(body, 'external_id'),
        name: readString(body, 'name'),
        phone: readString(body, 'phone'),
        signed_up_at: readInteger(body, 'signed_up_at'),
        last_seen_at: readInteger(body, 'last_seen_at'),
        custom_attributes: readObject(body, 'custom_attributes'),
    }
}

interface CompanyInput {
    company_id: string
    name?: string | null
    plan?: string | null
    size?: number | null
    website?: string | null
    industry?: string | null
    remote_created_at?: number | null
    monthly_spend?: number
    custom_attributes?: JsonObject
}

function parseCompanyInput(body: JsonObject): CompanyInput {
    rejectUnknownKeys(body, COMPANY_KEYS)
    const companyId = readString(body, 'company_id')
    if (!companyId) throw missing('company_id')
    const spend = body.monthly_spend
    if (
        spend !== undefined &&
        (typeof spend !== 'number' || !Number.isFinite(spend) || spend > 2 ** 31 - 1)
    ) {
        throw invalid('monthly_spend must be a number up to 2147483647')
    }
    return {
        company_id: companyId,
        name: readString(body, 'name'),
        plan: readString(body, 'plan'),
        size: readInteger(body, 'size'),
        website: readString(body, 'website'),
        industry: readString(body, 'industry'),
        remote_created_at: readInteger(body, 'remote_created_at'),
        // Intercom: "this will truncate floats".
        monthly_spend: spend === undefined ? undefined : Math.trunc(spend),
        custom_attributes: readObject(body, 'custom_attributes'),
    }
}

function applyCompanyInput(company: StoredCompany, input: CompanyInput, now: number): void {
    const keep = <T>(next: T | undefined, current: T): T => (next === undefined ? current : next)
    company.name = keep(input.name, company.name)
    company.size = keep(input.size, company.size)
    company.website = keep(input.website, company.website)
    company.industry = keep(input.industry, company.industry)
    company.remote_created_at = keep(input.remote_created_at, company.remote_created_at)
    company.monthly_spend = keep(input.monthly_spend, company.monthly_spend)
    if (input.plan !== undefined) {
        company.plan = input.plan === null ? {} : { type: 'plan', id: `plan-${input.plan}`, name: input.plan }
    }
    company.custom_attributes = { ...company.custom_attributes, ...input.custom_attributes }
    company.updated_at = now
}

function parseEventDraft(body: JsonObject, longStrings: LongStringPolicy): EventDraft {
    rejectUnknownKeys(body, EVENT_KEYS)
    const name = body.event_name
    if (name === undefined || name === null) throw missing('event_name')
    if (typeof name !== 'string' || name.trim() === '') throw invalid('event_name must be a non-empty string')
    const createdAt = body.created_at
    if (createdAt === undefined || createdAt === null) throw missing('created_at')
    if (!isInteger(createdAt) || createdAt < 0 || createdAt > MAX_UNIX_SECONDS) {
        throw invalid('created_at must be an integer UTC Unix timestamp in seconds')
    }
    return {
        event_name: name,
        created_at: createdAt,
        identifier: parseEventIdentifier(body),
        metadata: parseMetadata(body.metadata, longStrings),
    }
}

/** Exactly one of id, user_id, email (the spec's three `anyOf` branches); null counts as absent. */
function parseEventIdentifier(body: JsonObject): EventDraft['identifier'] {
    const present = EVENT_IDENTIFIERS.filter((key) => body[key] !== undefined && body[key] !== null)
    if (present.length === 0)
        throw new ApiError(400, 'parameter_not_found', 'One of id, user_id or email is required')
    if (present.length > 1) {
        throw invalid(
            `Exactly one of id, user_id or email may identify the contact, got ${present.join(' and ')}`
        )
    }
    const kind = present[0]
    const value = body[kind]
    if (typeof value !== 'string' || value === '') throw invalid(`${kind} must be a non-empty string`)
    return { kind, value }
}

/**
 * Flat metadata as documented: strings, numbers (and booleans), rich links {url, value} and monetary
 * amounts {amount: integer cents, currency}. Every key is validated; only the first 10 are kept, like
 * Intercom ("we ignore any further keys").
 */
function parseMetadata(value: unknown, longStrings: LongStringPolicy): JsonObject {
    if (value === undefined || value === null) return {}
    if (!isRecord(value)) throw invalid('metadata must be an object')
    const entries = Object.entries(value).map(([key, item]): [string, unknown] => {
        if (key === '' || /[.$]/.test(key)) {
            throw invalid(
                `metadata key '${key}' is invalid: keys must be non-empty and contain no '.' or '$'`
            )
        }
        return [key, metadataValue(key, item, longStrings)]
    })
    return Object.fromEntries(entries.slice(0, MAX_METADATA_KEYS))
}

function metadataValue(key: string, value: unknown, longStrings: LongStringPolicy): unknown {
    if (typeof value === 'string') {
        if (charLength(value) <= MAX_METADATA_STRING) return value
        if (longStrings === 'truncate') return [...value].slice(0, MAX_METADATA_STRING).join('')
        throw invalid(`metadata '${key}' is longer than ${MAX_METADATA_STRING} characters`)
    }
    if (typeof value === 'number' || typeof value === 'boolean') return value
    if (isRichLink(value) || isMonetaryAmount(value)) return { ...value }
    throw invalid(
        `metadata '${key}' is not supported: nested objects and arrays are not allowed, ` +
            'only rich links {url, value} and monetary amounts {amount, currency}'
    )
}

function hasExactKeys(value: JsonObject, keys: string[]): boolean {
    const own = Object.keys(value)
    return own.length === keys.length && keys.every((key) => own.includes(key))
}

function isRichLink(value: unknown): value is { url: string; value: string } {
    return (
        isRecord(value) &&
        hasExactKeys(value, ['url', 'value']) &&
        typeof value.url === 'string' &&
        /^https?:\/\//i.test(value.url) &&
        typeof value.value === 'string'
    )
}

function isMonetaryAmount(value: unknown): value is { amount: number; currency: string } {
    return (
        isRecord(value) &&
        hasExactKeys(value, ['amount', 'currency']) &&
        isInteger(value.amount) &&
        typeof value.currency === 'string' &&
        value.currency !== ''
    )
}

// --- search -----------------------------------------------------------------------------------------

type SearchField = 'id' | 'email' | 'external_id' | 'role' | 'name' | 'phone'
type SearchOperator = '=' | '!=' | 'IN' | 'NIN'
interface SearchFilter {
    field: SearchField
    operator: SearchOperator
    value: string | string[]
}
interface SearchGroup {
    operator: 'AND' | 'OR'
    value: SearchNode[]
}
type SearchNode = SearchFilter | SearchGroup

function isGroup(node: SearchNode): node is SearchGroup {
    return node.operator === 'AND' || node.operator === 'OR'
}

const SEARCH_FIELDS: readonly SearchField[] = ['id', 'email', 'external_id', 'role', 'name', 'phone']
const SEARCH_OPERATORS: readonly SearchOperator[] = ['=', '!=', 'IN', 'NIN']

function parseSearchNode(node: unknown): SearchNode {
    if (!isRecord(node)) throw invalid('query must be an object')
    const { field, operator, value } = node
    if (operator === 'AND' || operator === 'OR') {
        if (!Array.isArray(value) || value.length === 0)
            throw invalid(`${operator} needs a non-empty list of filters`)
        if (value.length > MAX_FILTERS_PER_GROUP) {
            throw invalid(
                `A maximum of ${MAX_FILTERS_PER_GROUP} filters is allowed in each ${operator} group`
            )
        }
        return { operator, value: value.map(parseSearchNode) }
    }
    if (!SEARCH_FIELDS.includes(field as SearchField)) {
        throw invalid(`The emulator can search on ${SEARCH_FIELDS.join(', ')}; not on '${String(field)}'`)
    }
    if (!SEARCH_OPERATORS.includes(operator as SearchOperator)) {
        throw invalid(
            `The emulator supports the operators ${SEARCH_OPERATORS.join(', ')}; not '${String(operator)}'`
        )
    }
    const list = operator === 'IN' || operator === 'NIN'
    const valid = list
        ? Array.isArray(value) && value.every((v) => typeof v === 'string')
        : typeof value === 'string'
    if (!valid) {
        const expected = list ? 'a list of strings' : 'a string'
        throw invalid(`The value for ${String(field)} ${String(operator)} must be ${expected}`)
    }
    return {
        field: field as SearchField,
        operator: operator as SearchOperator,
        value: value as string | string[],
    }
}

function matches(record: ContactRecord, node: SearchNode): boolean {
    if (isGroup(node)) {
        const test = (child: SearchNode) => matches(record, child)
        return node.operator === 'AND' ? node.value.every(test) : node.value.some(test)
    }
    // Intercom matches emails regardless of case; other string fields exactly.
    const fold = (text: string | null) => (node.field === 'email' ? text?.toLowerCase() : text)
    const wanted = (Array.isArray(node.value) ? node.value : [node.value]).map(fold)
    const hit = wanted.includes(fold(record[node.field]))
    return node.operator === '=' || node.operator === 'IN' ? hit : !hit
}

interface Pagination {
    perPage: number
    offset: number
}

/** `starting_after` is the opaque cursor of the previous page's `pages.next`; here a base64 offset. */
function parsePagination(value: unknown): Pagination {
    if (value === undefined || value === null) return { perPage: DEFAULT_SEARCH_PER_PAGE, offset: 0 }
    if (!isRecord(value)) throw invalid('pagination must be an object')
    const perPage = value.per_page ?? DEFAULT_SEARCH_PER_PAGE
    if (!isInteger(perPage) || perPage < 1 || perPage > MAX_SEARCH_PER_PAGE) {
        throw invalid(`per_page must be an integer between 1 and ${MAX_SEARCH_PER_PAGE}`)
    }
    const cursor = value.starting_after
    if (cursor === undefined || cursor === null) return { perPage, offset: 0 }
    const offset = typeof cursor === 'string' ? Number(Buffer.from(cursor, 'base64').toString()) : NaN
    if (!isInteger(offset) || offset < 0) throw invalid('starting_after is not a valid cursor')
    return { perPage, offset }
}

function pageOf(contacts: StoredContact[], { perPage, offset }: Pagination): JsonObject {
    const page = Math.floor(offset / perPage) + 1
    const next = offset + perPage
    const pages: JsonObject = {
        type: 'pages',
        page,
        per_page: perPage,
        total_pages: Math.ceil(contacts.length / perPage),
    }
    if (next < contacts.length) {
        pages.next = { page: page + 1, starting_after: Buffer.from(String(next)).toString('base64') }
    }
    return { type: 'list', data: contacts.slice(offset, next), total_count: contacts.length, pages }
}

// ---------------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------------

interface Reply {
    status: number
    body?: unknown
}

interface RouteInput {
    body: JsonObject
    params: string[]
    query: URLSearchParams
}

interface Route {
    method: string
    pattern: RegExp
    /** Key of stats.byRoute. */
    name: string
    handle: (workspace: Workspace, input: RouteInput) => Reply
}

function getMe(workspace: Workspace): Reply {
    return {
        status: 200,
        body: {
            type: 'admin',
            id: '991200001',
            email: 'admin@example.test',
            name: 'Emulator Admin',
            email_verified: true,
            app: {
                type: 'app',
                id_code: APP_ID,
                name: 'Intercom emulator',
                created_at: 1700000000,
                secure: false,
                identity_verification: false,
                timezone: 'UTC',
                region: workspace.options.region,
            },
            avatar: { type: 'avatar', image_url: null },
            has_inbox_seat: true,
        },
    }
}

function searchContacts(workspace: Workspace, { body }: RouteInput): Reply {
    rejectUnknownKeys(body, SEARCH_KEYS)
    if (body.query === undefined || body.query === null) throw missing('query')
    const query = parseSearchNode(body.query)
    const pagination = parsePagination(body.pagination)
    return { status: 200, body: pageOf(workspace.search(query), pagination) }
}

function createContact(workspace: Workspace, { body }: RouteInput): Reply {
    return { status: 200, body: workspace.createContact(parseContactInput(body)) }
}

function getContact(workspace: Workspace, { params }: RouteInput): Reply {
    return { status: 200, body: workspace.getContact(params[0]) }
}

function updateContact(workspace: Workspace, { body, params }: RouteInput): Reply {
    return { status: 200, body: workspace.updateContact(params[0], parseContactInput(body)) }
}

function attachCompany(workspace: Workspace, { body, params }: RouteInput): Reply {
    const companyId = body.id
    if (companyId === undefined || companyId === null || companyId === '') {
        throw new ApiError(400, 'parameter_not_found', 'company not specified')
    }
    if (typeof companyId !== 'string') throw invalid('id must be a string')
    return { status: 200, body: workspace.attachCompany(params[0], companyId) }
}

function upsertCompany(workspace: Workspace, { body }: RouteInput): Reply {
    return { status: 200, body: workspace.upsertCompany(body) }
}

function attributeBody(attribute: DataAttribute & Partial<AttributeRecord>, custom: boolean): JsonObject {
    return {
        ...(custom ? { id: attribute.id } : {}),
        type: 'data_attribute',
        name: attribute.name,
        full_name: custom ? `custom_attributes.${attribute.name}` : attribute.name,
        label: attribute.name,
        description: attribute.description ?? '',
        data_type: attribute.data_type,
        api_writable: true,
        ui_writable: false,
        messenger_writable: attribute.messenger_writable ?? false,
        custom,
        archived: false,
        ...(custom ? { created_at: attribute.created_at, updated_at: attribute.created_at } : {}),
        model: attribute.model,
    }
}

function listDataAttributes(workspace: Workspace, { query }: RouteInput): Reply {
    const model = query.get('model')
    if (model !== null && model !== 'contact' && model !== 'company' && model !== 'conversation') {
        throw invalid('model must be one of contact, company, conversation')
    }
    const models: AttributeModel[] =
        model === null ? ['contact', 'company'] : model === 'conversation' ? [] : [model]
    const standard = models.flatMap((m) =>
        Object.entries(STANDARD_ATTRIBUTES[m]).map(([name, dataType]) =>
            attributeBody({ name, data_type: dataType, model: m }, false)
        )
    )
    const custom = models.flatMap((m) => workspace.customAttributes(m).map((a) => attributeBody(a, true)))
    return { status: 200, body: { type: 'list', data: [...standard, ...custom] } }
}

function createDataAttribute(workspace: Workspace, { body }: RouteInput): Reply {
    rejectUnknownKeys(body, DATA_ATTRIBUTE_KEYS)
    const { name, model, data_type: dataType } = body
    if (model !== 'contact' && model !== 'company') {
        throw invalid('The Data Attribute model field must be either contact or company')
    }
    if (!DATA_TYPES.includes(dataType as DataType)) throw invalid("Data Type isn't an option")
    if (typeof name !== 'string' || !/^[\p{L}\p{N}\p{Sc}_\- ]+$/u.test(name) || name.trim() === '') {
        throw invalid(
            'Your name for this attribute must only contain alphanumeric characters, ' +
                'currency symbols, and hyphens'
        )
    }
    const description = readString(body, 'description') ?? ''
    const record = workspace.defineAttribute({ name, model, data_type: dataType as DataType }, description)
    return { status: 200, body: attributeBody(record, true) }
}

function createEvent(workspace: Workspace, { body }: RouteInput): Reply {
    workspace.trackEvent(parseEventDraft(body, workspace.options.longStrings))
    return { status: 202 }
}

/** More specific paths first: /contacts/search must not be read as /contacts/{id}. */
const ROUTES: Route[] = [
    { method: 'GET', pattern: /^\/me$/, name: 'GET /me', handle: getMe },
    {
        method: 'POST',
        pattern: /^\/contacts\/search$/,
        name: 'POST /contacts/search',
        handle: searchContacts,
    },
    { method: 'POST', pattern: /^\/contacts$/, name: 'POST /contacts', handle: createContact },
    { method: 'GET', pattern: /^\/contacts\/([^/]+)$/, name: 'GET /contacts/{id}', handle: getContact },
    { method: 'PUT', pattern: /^\/contacts\/([^/]+)$/, name: 'PUT /contacts/{id}', handle: updateContact },
    {
        method: 'POST',
        pattern: /^\/contacts\/([^/]+)\/companies$/,
        name: 'POST /contacts/{id}/companies',
        handle: attachCompany,
    },
    { method: 'POST', pattern: /^\/companies$/, name: 'POST /companies', handle: upsertCompany },
    {
        method: 'GET',
        pattern: /^\/data_attributes$/,
        name: 'GET /data_attributes',
        handle: listDataAttributes,
    },
    {
        method: 'POST',
        pattern: /^\/data_attributes$/,
        name: 'POST /data_attributes',
        handle: createDataAttribute,
    },
    { method: 'POST', pattern: /^\/events$/, name: 'POST /events', handle: createEvent },
]

interface RouteMatch {
    route: Route
    params: string[]
}

function findRoute(method: string, path: string): RouteMatch | undefined {
    for (const route of ROUTES) {
        const match = route.method === method ? route.pattern.exec(path) : null
        if (match) {
            try {
                return { route, params: match.slice(1).map((p) => decodeURIComponent(p)) }
            } catch {
                return undefined // malformed percent-encoding: no such resource
            }
        }
    }
    return undefined
}

// ---------------------------------------------------------------------------------------------------
// HTTP: gates (auth, rate limit, faults, headers, body) then dispatch
// ---------------------------------------------------------------------------------------------------

/** Fixed windows aligned on the clock, like Intercom's 10-second windows. */
class FixedWindowLimiter {
    private windowStart = Number.NaN
    private used = 0

    private roll(now: number, windowMs: number): void {
        const start = Math.floor(now / windowMs) * windowMs
        if (start !== this.windowStart) {
            this.windowStart = start
            this.used = 0
        }
    }

    /** Counts one call; false when the window's budget is already spent. */
    take(now: number, limit: number, windowSeconds: number): boolean {
        this.roll(now, windowSeconds * 1000)
        if (this.used >= limit) return false
        this.used += 1
        return true
    }

    headers(now: number, limit: number, windowSeconds: number): Record<string, string> {
        const windowMs = windowSeconds * 1000
        this.roll(now, windowMs)
        return {
            'X-RateLimit-Limit': String(limit),
            'X-RateLimit-Remaining': String(Math.max(0, limit - this.used)),
            'X-RateLimit-Reset': String(Math.ceil((this.windowStart + windowMs) / 1000)),
        }
    }

    clear(): void {
        this.windowStart = Number.NaN
        this.used = 0
    }
}

/** What to do with a request once it passed through the gates. */
type Outcome = { kind: 'reply'; reply: Reply; delayed: boolean } | { kind: 'drop' }

function readRawBody(req: IncomingMessage): Promise<string> {
    return new Promise((resolve, reject) => {
        const chunks: Buffer[] = []
        req.on('data', (chunk: Buffer) => chunks.push(chunk))
        req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
        req.on('error', reject)
    })
}

/** No Accept header means "anything" in HTTP; one that excludes JSON gets Intercom's 406. */
function acceptsJson(accept: string | undefined): boolean {
    if (accept === undefined || accept.trim() === '') return true
    return accept
        .split(',')
        .map((part) => part.split(';')[0].trim().toLowerCase())
        .some((type) => type === 'application/json' || type === 'application/*' || type === '*/*')
}

function parseJsonBody(raw: string, contentType: string | undefined): JsonObject {
    if (raw.trim() === '') return {}
    if (!contentType || !/[/+]json\b/i.test(contentType)) {
        throw invalid('Content-Type must be application/json')
    }
    let parsed: unknown
    try {
        parsed = JSON.parse(raw)
    } catch {
        throw invalid('The request body is not valid JSON')
    }
    if (!isRecord(parsed)) throw invalid('The request body must be a JSON object')
    return parsed
}

function recordedBody(raw: string): unknown {
    if (raw === '') return null
    try {
        return JSON.parse(raw)
    } catch {
        return raw
    }
}

function recordedHeaders(req: IncomingMessage): Record<string, string> {
    const headers: Record<string, string> = {}
    for (const [name, value] of Object.entries(req.headers)) {
        if (name !== 'authorization' && value !== undefined) {
            headers[name] = Array.isArray(value) ? value.join(', ') : value
        }
    }
    return headers
}

class EmulatorServer implements Emulator {
    url = ''
    port = 0
    private readonly counters = emptyStats()
    private readonly workspace: Workspace
    private readonly limiter = new FixedWindowLimiter()
    private readonly listeners = new Set<(request: RecordedRequest) => void>()
    private readonly timers = new Set<NodeJS.Timeout>()
    private recorded: RecordedRequest[] = []
    private random: () => number
    private closed = false

    constructor(
        private readonly server: Server,
        readonly options: ResolvedOptions
    ) {
        this.workspace = new Workspace(options, this.counters)
        this.random = seededRandom(options.seed)
        server.on('request', (req: IncomingMessage, res: ServerResponse) => {
            this.serve(req, res).catch((error: unknown) => this.failSafe(res, error))
        })
    }

    async listen(): Promise<void> {
        await new Promise<void>((resolve, reject) => {
            this.server.once('error', reject)
            this.server.listen(this.options.port, this.options.host, () => {
                this.server.off('error', reject)
                resolve()
            })
        })
        this.port = (this.server.address() as AddressInfo).port
        const host = this.options.host.includes(':') ? `[${this.options.host}]` : this.options.host
        this.url = `http://${host}:${this.port}`
    }

    private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
        const at = this.options.clock()
        const raw = await readRawBody(req)
        const method = req.method ?? 'GET'
        const url = new URL(req.url ?? '/', 'http://emulator.invalid')
        const found = findRoute(method, url.pathname)
        const outcome = this.decide(req, raw, url, found)
        const status = outcome.kind === 'drop' ? 0 : outcome.reply.status
        this.count(found?.route.name ?? 'unknown', outcome.kind === 'drop' ? 'dropped' : String(status))
        this.record({
            method,
            path: url.pathname,
            status,
            body: recordedBody(raw),
            at,
            headers: recordedHeaders(req),
        })
        if (outcome.kind === 'drop') {
            req.socket.destroy()
            return
        }
        if (outcome.delayed && this.options.latencyMs > 0) await this.sleep(this.options.latencyMs)
        this.write(res, outcome.reply)
    }

    /** The gates in order: auth, then the rate limit, then injected faults, then the request itself. */
    private decide(req: IncomingMessage, raw: string, url: URL, found: RouteMatch | undefined): Outcome {
        if (!this.isAuthorized(req.headers.authorization)) {
            return {
                kind: 'reply',
                reply: errorReply(401, 'unauthorized', 'Access Token Invalid'),
                delayed: false,
            }
        }
        const { rateLimit, windowSeconds } = this.options
        if (!this.limiter.take(this.options.clock(), rateLimit, windowSeconds)) {
            this.counters.rateLimited += 1
            const message = `Exceeded rate limit of ${rateLimit} in ${windowSeconds}_seconds`
            return { kind: 'reply', reply: errorReply(429, 'rate_limit_exceeded', message), delayed: true }
        }
        const fault = this.drawFault()
        if (fault === 'drop') return { kind: 'drop' }
        if (fault !== undefined) {
            const message = 'Sorry, the API service is temporarily unavailable'
            return { kind: 'reply', reply: errorReply(fault, 'service_unavailable', message), delayed: true }
        }
        return { kind: 'reply', reply: this.dispatch(req, raw, url, found), delayed: true }
    }

    private isAuthorized(header: string | undefined): boolean {
        const match = /^Bearer (.+)$/.exec(header ?? '')
        return match !== null && this.options.tokens.includes(match[1])
    }

    /** Three draws per request whatever the rates, so a seed replays the same sequence when rates change. */
    private drawFault(): 'drop' | number | undefined {
        const [dropDraw, errorDraw, statusDraw] = [this.random(), this.random(), this.random()]
        if (dropDraw < this.options.dropRate) return 'drop'
        if (errorDraw < this.options.errorRate) {
            return FAULT_STATUSES[Math.floor(statusDraw * FAULT_STATUSES.length)]
        }
        return undefined
    }

    private dispatch(req: IncomingMessage, raw: string, url: URL, found: RouteMatch | undefined): Reply {
        if (!acceptsJson(req.headers.accept)) {
            return errorReply(406, 'not_acceptable', 'The Accept header must include application/json')
        }
        try {
            const body = parseJsonBody(raw, req.headers['content-type'])
            if (!found) {
                throw new ApiError(404, 'not_found', `Resource Not Found: ${req.method} ${url.pathname}`)
            }
            return found.route.handle(this.workspace, { body, params: found.params, query: url.searchParams })
        } catch (error) {
            if (error instanceof ApiError) return errorReply(error.status, error.code, error.message)
            throw error
        }
    }

    private write(res: ServerResponse, reply: Reply): void {
        if (res.destroyed || res.headersSent) return
        const text = reply.body === undefined ? '' : JSON.stringify(reply.body)
        const { rateLimit, windowSeconds } = this.options
        res.writeHead(reply.status, {
            'Content-Type': 'application/json; charset=utf-8',
            'Content-Length': Buffer.byteLength(text),
            ...this.limiter.headers(this.options.clock(), rateLimit, windowSeconds),
        })
        res.end(text)
    }

    /** A bug in the emulator must still answer (500), or the caller would hang until its timeout. */
    private failSafe(res: ServerResponse, error: unknown): void {
        const message = error instanceof Error ? error.message : String(error)
        console.error(`intercom emulator: internal error: ${message}`)
        this.write(res, errorReply(500, 'server_error', `emulator internal error: ${message}`))
    }

    private sleep(ms: number): Promise<void> {
        return new Promise((resolve) => {
            const timer = setTimeout(() => {
                this.timers.delete(timer)
                resolve()
            }, ms)
            this.timers.add(timer)
        })
    }

    private count(route: string, status: string): void {
        this.counters.calls += 1
        increment(this.counters.byRoute, route)
        increment(this.counters.byStatus, status)
    }

    private record(request: RecordedRequest): void {
        this.recorded.push(request)
        if (this.recorded.length > this.options.recordLimit) {
            this.recorded = this.recorded.slice(-this.options.recordLimit)
        }
        for (const listener of this.listeners) listener(request)
    }

    // --- the Emulator interface ---------------------------------------------------------------------

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

    addContact(contact: SeedContact): { id: string } {
        return this.workspace.seedContact(contact)
    }

    addDataAttribute(attribute: DataAttribute): void {
        this.workspace.defineAttribute(attribute)
    }

    contacts(): StoredContact[] {
        return this.workspace.allContacts()
    }

    companies(): StoredCompany[] {
        return this.workspace.allCompanies()
    }

    events(): StoredEvent[] {
        return this.workspace.allEvents()
    }

    requests(): RecordedRequest[] {
        return this.recorded.map((request) => structuredClone(request))
    }

    dataAttributes(): DataAttribute[] {
        return this.workspace
            .customAttributes()
            .map(({ name, data_type, model }) => ({ name, data_type, model }))
    }

    stats(): EmulatorStats {
        return structuredClone(this.counters)
    }

    onRequest(listener: (request: RecordedRequest) => void): () => void {
        this.listeners.add(listener)
        return () => this.listeners.delete(listener)
    }

    reset(): void {
        this.recorded = []
        Object.assign(this.counters, emptyStats())
        this.workspace.clearEvents()
        this.limiter.clear()
        this.random = seededRandom(this.options.seed)
    }

    async close(): Promise<void> {
        if (this.closed) return
        this.closed = true
        for (const timer of this.timers) clearTimeout(timer)
        this.timers.clear()
        const closing = new Promise<void>((resolve) => this.server.close(() => resolve()))
        // Keep-alive sockets of fetch clients would otherwise hold close() open for seconds.
        this.server.closeAllConnections()
        await closing
    }
}

function errorReply(status: number, code: string, message: string): Reply {
    return { status, body: errorList(code, message) }
}

/** Starts an emulator on loopback; resolves once it listens. */
export async function startEmulator(options: EmulatorOptions = {}): Promise<Emulator> {
    const resolved: ResolvedOptions = { ...DEFAULT_OPTIONS, ...definedOnly(options) }
    resolved.tokens = [...resolved.tokens]
    validateOptions(resolved)
    const emulator = new EmulatorServer(createServer(), resolved)
    for (const contact of options.contacts ?? []) emulator.addContact(contact)
    await emulator.listen()
    return emulator
}
