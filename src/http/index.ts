export { buildApp, DEFAULT_BODY_LIMIT } from './app.ts';
export type { AppOptions } from './app.ts';
export type { Identity, IdentityResolver } from './identity.ts';
export { tokenResolver, anonymousResolver } from './identity.ts';
export { outcomeOf, statusOf } from './outcome.ts';
export { sendResource } from './fhir-routes.ts';
export { buildWitnessApp, WITNESS_AUDIENCE } from './witness-app.ts';
export type { WitnessAppOptions } from './witness-app.ts';
