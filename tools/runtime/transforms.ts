/** PostHog's three Babel plugins for sandboxed plugin code, and the Babel call.
 *
 * Re-written from their
 * sources (PostHog/plugin-server `src/worker/vm/transforms/`, later in PostHog/posthog `plugin-server/`):
 *
 * - replace-imports: each `import` becomes a `const` reading the frozen host table `__pluginHostImports`; a
 *   module not in it throws "Cannot import 'x'! …". Default and namespace imports read `table[x].default`
 *   in 2021, `table[x]` later.
 * - loop-timeout: `const _LP = Date.now()` before each `while`/`for`/`do` loop, and first in its body a
 *   check that throws after the task timeout (30 s in PostHog).
 * - promise-timeout: `await x` → `await __asyncGuard(x, name)`, `p.then` → `__asyncGuard(p, name).then`.
 *   In 2021 `name` was the callee EXPRESSION of `x` (`x.callee || x`), evaluated a second time:
 *   `await a.b().c()` runs `a.b()` twice. Later versions pass a string (`"await on line L:C"`).
 */
import * as babel from '@babel/core'
import type { NodePath, PluginObj, types as BabelTypes } from '@babel/core'

export type GuardStyle = 'callee-2021' | 'string-name'
export type ImportStyle = 'default-member-2021' | 'module-itself'

interface TransformOptions {
    /** Module names the host table provides. */
    importNames: readonly string[]
    guard: GuardStyle
    imports: ImportStyle
    /** PostHog's TASK_TIMEOUT: the loop limit, in seconds. Default 30. */
    loopTimeoutSeconds?: number
}

type T = typeof BabelTypes

/** Marks nodes this file created, so the visitors do not wrap their own output again. */
const WRAPPED = new WeakSet<object>()

/** PostHog's answer to an import it does not provide. */
export function importRefusal(source: string): Error {
    return new Error(`Cannot import '${source}'! This package is not provided by PostHog in plugins.`)
}

function hostLookup(t: T, source: string, member: string | null): BabelTypes.Expression {
    const table = t.memberExpression(t.identifier('__pluginHostImports'), t.stringLiteral(source), true)
    return member === null ? table : t.memberExpression(table, t.stringLiteral(member), true)
}

function replaceImports(options: TransformOptions): (api: { types: T }) => PluginObj {
    const known = new Set(options.importNames)
    const whole = options.imports === 'default-member-2021' ? 'default' : null
    return ({ types: t }) => ({
        name: 'posthog-replace-imports',
        visitor: {
            ImportDeclaration: {
                exit(path: NodePath<BabelTypes.ImportDeclaration>) {
                    const source = path.node.source.value
                    if (!known.has(source)) throw importRefusal(source)
                    const declarators = path.node.specifiers.map((specifier) => {
                        const { imported } = specifier as Partial<BabelTypes.ImportSpecifier>
                        const named =
                            imported && (t.isStringLiteral(imported) ? imported.value : imported.name)
                        // A named import reads its member of the table; default and namespace ones `whole`.
                        const lookup = hostLookup(t, source, named ?? whole)
                        return t.variableDeclarator(t.identifier(specifier.local.name), lookup)
                    })
                    if (declarators.length === 0) path.remove()
                    else path.replaceWith(t.variableDeclaration('const', declarators))
                },
            },
            // Later versions also rewrote `require('x')`; 2021 left it to fail at run time.
            CallExpression(path: NodePath<BabelTypes.CallExpression>) {
                const { node } = path
                if (options.imports !== 'module-itself' || !t.isIdentifier(node.callee, { name: 'require' }))
                    return
                const [first] = node.arguments
                if (node.arguments.length !== 1 || !t.isStringLiteral(first)) return
                if (!known.has(first.value)) throw importRefusal(first.value)
                path.replaceWith(hostLookup(t, first.value, null))
            },
        },
    })
}

type LoopPath = NodePath<BabelTypes.WhileStatement | BabelTypes.ForStatement | BabelTypes.DoWhileStatement>

function loopTimeout(options: TransformOptions): (api: { types: T }) => PluginObj {
    const seconds = options.loopTimeoutSeconds ?? 30
    return ({ types: t }) => {
        const now = () => t.callExpression(t.memberExpression(t.identifier('Date'), t.identifier('now')), [])
        const protect = (path: LoopPath): void => {
            if (!path.node.loc) return // a loop Babel generated itself
            const id = path.scope.generateUidIdentifier('LP')
            path.insertBefore(t.variableDeclaration('const', [t.variableDeclarator(id, now())]))
            const message = `Script execution timed out after looping for ${seconds} second${seconds === 1 ? '' : 's'} on line ${at(path.node)}`
            const check = t.ifStatement(
                t.binaryExpression('>', t.binaryExpression('-', now(), id), t.numericLiteral(seconds * 1000)),
                t.throwStatement(t.newExpression(t.identifier('Error'), [t.stringLiteral(message)]))
            )
            const body = path.get('body') as NodePath<BabelTypes.Statement>
            if (body.isBlockStatement()) body.unshiftContainer('body', check)
            else body.replaceWith(t.blockStatement([check, body.node]))
        }
        return {
            name: 'posthog-loop-timeout',
            visitor: { WhileStatement: protect, ForStatement: protect, DoWhileStatement: protect },
        }
    }
}

function at(node: BabelTypes.Node): string {
    const start = node.loc?.start
    return start ? `${start.line}:${start.column}` : '?'
}

function promiseTimeout(options: TransformOptions): (api: { types: T }) => PluginObj {
    return ({ types: t }) => ({
        name: 'posthog-promise-timeout',
        visitor: {
            MemberExpression: {
                exit(path: NodePath<BabelTypes.MemberExpression>) {
                    const { node } = path
                    if (WRAPPED.has(node) || !t.isIdentifier(node.property, { name: 'then' })) return
                    const object = node.object as BabelTypes.Expression
                    // 2021 gave `.then` no name at all; later versions a string.
                    const args =
                        options.guard === 'string-name'
                            ? [object, t.stringLiteral(`Promise.then on line ${at(node)}`)]
                            : [object]
                    const guarded = t.memberExpression(
                        t.callExpression(t.identifier('__asyncGuard'), args),
                        t.identifier('then')
                    )
                    WRAPPED.add(guarded)
                    path.replaceWith(guarded)
                },
            },
            AwaitExpression: {
                exit(path: NodePath<BabelTypes.AwaitExpression>) {
                    const { node } = path
                    if (WRAPPED.has(node)) return
                    const { argument } = node
                    const callee =
                        t.isCallExpression(argument) && t.isExpression(argument.callee)
                            ? argument.callee
                            : argument
                    // 2021: the callee itself, as an expression: evaluated again when the guard is called.
                    const name =
                        options.guard === 'string-name'
                            ? t.stringLiteral(`await on line ${at(node)}`)
                            : t.cloneNode(callee, true)
                    const guarded = t.awaitExpression(
                        t.callExpression(t.identifier('__asyncGuard'), [node.argument, name])
                    )
                    WRAPPED.add(guarded)
                    path.replaceWith(guarded)
                },
            },
        },
    })
}

/** No Babel config files; the plugin file named as PostHog names it. */
const AS_INDEX_TS = { babelrc: false, configFile: false, filename: 'index.ts' }
const TYPESCRIPT = require.resolve('@babel/preset-typescript')

/** Babel as PostHog configured it for plugins: presets typescript and env for this Node. */
export function posthogBabel(source: string, plugins: babel.PluginItem[] = []): string {
    const env = [require.resolve('@babel/preset-env'), { targets: { node: process.versions.node } }]
    const result = babel.transformSync(source, {
        ...AS_INDEX_TS,
        envName: 'production',
        code: true,
        presets: [TYPESCRIPT, env],
        plugins,
    })
    if (!result?.code) throw new Error('Babel produced no code for the plugin')
    return result.code
}

const transformed = new Map<string, string>()

/** PostHog's Babel call for sandboxed plugins: the presets and its three plugins (memoized). */
export function transformPluginCode(source: string, options: TransformOptions): string {
    const key = JSON.stringify([options, source])
    const plugins = [replaceImports(options), loopTimeout(options), promiseTimeout(options)]
    if (!transformed.has(key)) transformed.set(key, posthogBabel(source, plugins))
    return transformed.get(key)!
}

/**
 * Finds `await f().g()`-shaped awaits in plugin source, with their line and callee as written: the 2021
 * promise-timeout passes the callee (`f().g`) to the guard as an expression, so `f()` runs twice.
 */
export function doubleEvaluatedAwaits(source: string): Array<{ line: number; callee: string }> {
    const ast = babel.parseSync(source, { ...AS_INDEX_TS, presets: [TYPESCRIPT] })
    if (!ast) return []
    const found: Array<{ line: number; callee: string }> = []
    babel.traverse(ast, {
        AwaitExpression(path) {
            const argument = path.get('argument')
            if (!argument.isCallExpression()) return
            const callee = argument.get('callee')
            let calls = callee.isCallExpression() || callee.isNewExpression()
            callee.traverse({
                'CallExpression|NewExpression'(inner) {
                    calls = true
                    inner.stop()
                },
                Function(inner) {
                    inner.skip() // a function written there is created, not run
                },
            })
            if (!calls) return
            const { start, end, loc } = callee.node
            found.push({ line: loc?.start.line ?? 0, callee: source.slice(start ?? 0, end ?? 0) })
        },
    })
    return found
}
