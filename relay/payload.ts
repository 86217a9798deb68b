/** Turns PostHog's webhook payload into the event the plugin expects.
 *
 * The HTTP Webhook destination (`template-webhook`)
 * posts its JSON body, by default `{"event": "{event}", "person": "{person}"}` rendered from CDP's invocation
 * globals: event {uuid, event, distinct_id, properties, elements_chain, timestamp, url}, person {id,
 * properties, name, url} or null. The event is built as PostHog's legacy plugin executor builds it.
 */
import type { ProcessedPluginEvent, Properties } from '@posthog/plugin-scaffold'

export const MAX_BATCH = 1000

const shortString = (maxLength: number) => ({ type: 'string', maxLength })
const properties = { type: 'object' }

const eventSchema = {
    type: 'object',
    required: ['distinct_id'],
    anyOf: [{ required: ['event'] }, { required: ['name'] }],
    properties: {
        uuid: shortString(200),
        event: { type: 'string', minLength: 1, maxLength: 400 },
        /** Older PostHog versions named the event `name`. */
        name: shortString(400),
        distinct_id: { type: 'string', minLength: 1, maxLength: 400 },
        properties,
        elements_chain: { type: 'string' },
        timestamp: shortString(100),
        url: shortString(2000),
    },
}

const personSchema = {
    type: ['object', 'null'],
    properties: {
        id: shortString(200),
        /** Older PostHog versions named the person id `uuid`. */
        uuid: shortString(200),
        properties,
        name: { type: 'string' },
        url: shortString(2000),
    },
}

export const itemSchema = {
    type: 'object',
    required: ['event'],
    properties: { event: eventSchema, person: personSchema },
}

/** One rendered body, or a JSON array of them (replays, tests). */
export const bodySchema = {
    anyOf: [itemSchema, { type: 'array', minItems: 1, maxItems: MAX_BATCH, items: itemSchema }],
}

export interface WebhookEvent {
    uuid?: string
    event?: string
    name?: string
    distinct_id: string
    properties?: Properties
    elements_chain?: string
    timestamp?: string
    url?: string
}

export interface WebhookPerson {
    id?: string
    uuid?: string
    properties?: Properties
    name?: string
    url?: string
}

export interface WebhookItem {
    event: WebhookEvent
    person?: WebhookPerson | null
}

export type WebhookBody = WebhookItem | WebhookItem[]

export function itemsOf(body: WebhookBody): WebhookItem[] {
    return Array.isArray(body) ? body : [body]
}

function objectOrUndefined(value: unknown): Properties | undefined {
    return value && typeof value === 'object' && !Array.isArray(value) ? (value as Properties) : undefined
}

/** As PostHog's legacy plugin executor does: `$set`/`$set_once` lifted from the properties, no ip, the person attached. */
export function toPluginEvent(item: WebhookItem): ProcessedPluginEvent {
    const { event, person } = item
    const props = event.properties ?? {}
    return {
        uuid: event.uuid ?? '',
        event: event.event ?? event.name ?? '',
        distinct_id: event.distinct_id,
        properties: props,
        timestamp: event.timestamp ?? '',
        team_id: 0,
        ip: null,
        $set: objectOrUndefined(props.$set),
        $set_once: objectOrUndefined(props.$set_once),
        ...(person
            ? {
                  person: {
                      uuid: person.id ?? person.uuid ?? '',
                      team_id: 0,
                      properties: person.properties ?? {},
                      created_at: '',
                  },
              }
            : {}),
    } as ProcessedPluginEvent
}
