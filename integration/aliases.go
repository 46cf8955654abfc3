// Package integration tests polyregion against real PostgreSQL clusters and
// replicator processes, started by package harness. Beside the tests and
// benchmarks it holds what only tests need and the shipped binary must not
// link: fault injection (faults.go: network faults, process crashes and
// pauses, clock offsets) and the validators that decide whether a run under
// faults lost, doubled or reordered anything (validators.go).
package integration

import "github.com/polyregion/polyregion/integration/harness"

// The harness's names, so that tests here use them unqualified.

type (
	Harness          = harness.Harness
	Spec             = harness.Spec
	Region           = harness.Region
	Cluster          = harness.Cluster
	ClusterOptions   = harness.ClusterOptions
	TableSpec        = harness.TableSpec
	RegionConfig     = harness.RegionConfig
	SearchSection    = harness.SearchSection
	SequencesSection = harness.SequencesSection
	ControlSection   = harness.ControlSection
	PeerEntry        = harness.PeerEntry
	SearchIndex      = harness.SearchIndex
)

// AppDB is the application database in every region.
const AppDB = harness.AppDB

var (
	Start           = harness.Start
	BuildBinary     = harness.BuildBinary
	ModuleRoot      = harness.ModuleRoot
	PGBinDir        = harness.PGBinDir
	RequestedLocale = harness.RequestedLocale
	FreePort        = harness.FreePort
	Retry           = harness.Retry

	CounterSchema = harness.CounterSchema
	CounterTables = harness.CounterTables
)
