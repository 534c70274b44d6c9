// Images: DICOM files checked, encrypted per file and indexed (blob store on disk or S3), the
// DIMSE provider and user, DICOMweb's multipart bodies, queries, active collection from a PACS
// with completeness reports, and the link of studies to FHIR Patient and ImagingStudy. Needs
// records, the KMS (data keys), crypto and the audit event type.
export { checkStructure } from './dicom-structure.ts';
export type { Structure, StructureResult } from './dicom-structure.ts';

export type { DicomJson, InstanceAttributes } from './dicom-attributes.ts';
export { FsBlobStore } from './blob-store.ts';
export { S3BlobStore } from './s3-blob-store.ts';
export type { S3BlobStoreOptions } from './s3-blob-store.ts';
export type { BlobStore } from './blob-store.ts';
export { ImagingStore } from './imaging-store.ts';
export type { ImagingStoreOptions, IngestOptions, IngestOutcome, StoredInstance } from './imaging-store.ts';
export { findImaging, attributeKeyword, toDicomJson, DEFAULT_RETURN } from './imaging-query.ts';
export type { FindOptions, QueryLevel, Match } from './imaging-query.ts';
export { startDimseServer } from './dimse-server.ts';
export type { DimseServer, DimseServerOptions, RemoteAe } from './dimse-server.ts';

export { StudyLinker } from './fhir-link.ts';
export type { StudyLinkerOptions, LinkOutcome } from './fhir-link.ts';
export { Collector, completenessReport } from './collector.ts';
export type { CollectorOptions, CollectionSource, CompletenessReport, DayRun } from './collector.ts';

export type { CollectionTransport, DicomwebSource, StudyAtSource } from './collection-transport.ts';
export { CollectionScheduler } from './collection-scheduler.ts';
export type { CollectionSchedulerOptions, SourceRun } from './collection-scheduler.ts';

export type { DicomPeer } from './dimse-scu.ts';
export { extractFrames } from './frames.ts';
export { MultipartError, readMultipartRelated, multipartRelated, mediaParams } from './multipart.ts';
export type { Part, StreamedPart } from './multipart.ts';
export type { ImagingError, ImagingErrorKind, ImagingResult } from './errors.ts';
export { storeFailureStatus } from './errors.ts';
export { ImageResidency } from './image-residency.ts';
