// The part of React's API jobwire/react uses, so that building it needs neither react's nor
// @types/react's full type package; apps type-check against their own React types.
declare module 'react' {
  export interface Context<T> {
    readonly Provider: unknown
    readonly Consumer: unknown
  }
  export function createContext<T>(defaultValue: T): Context<T>
  export function useContext<T>(context: Context<T>): T
  export function useState<S>(initial: S | (() => S)): [S, (next: S | ((previous: S) => S)) => void]
  export function useEffect(effect: () => void | (() => void), deps?: readonly unknown[]): void
}
