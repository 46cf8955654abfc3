# polyregion: active-active PostgreSQL replication across regions.
#
#   make demo   start three local regions, write conflicting traffic, check convergence
#   make test   unit tests (also under the race detector), fuzz seeds and the
#               real-PostgreSQL integration tests (the system's PostgreSQL,
#               then a subset on a newer one)
#   make bench  benchmarks
#   make build  build bin/polyregion
#   make lint   gofmt + go vet + staticcheck (a tool in go.mod)

GO      ?= go
BIN     ?= bin/polyregion
PKGS    ?= ./...
TESTFLAGS ?= -count=1 -timeout 40m

.PHONY: all build setup demo test test-race test-newer-pg unit fuzz bench lint clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/polyregion

# setup installs what the tests and the demo need and a fresh machine may lack:
# the PostgreSQL server binaries and, when run as root, an unprivileged user
# for the clusters (PostgreSQL refuses to run as root).
setup:
	@./.ci/setup

demo:
	@POLYREGION_SETUP=demo ./.ci/setup
	@$(MAKE) --no-print-directory build
	./$(BIN) demo

test: setup lint
	$(GO) test $(TESTFLAGS) $(PKGS)
	@$(MAKE) --no-print-directory test-race
	@$(MAKE) --no-print-directory test-newer-pg

# test-race runs every package's tests but the integration tests under the
# race detector, then integration tests that exercise every concurrent
# part of the replicator (links, appliers of several sources, the reader,
# joins with kills, the control plane, the search feed) with replicators
# built with it: a race any of them reports fails the test. Tests that time
# the replicator (the partition scenario gives in-flight transactions one
# second to land) are left out: built with the race detector it runs
# several times slower.
RACE_TESTS ?= ^(TestScenarioCrashExactlyOnce|TestRegionsJoinAndLeaveThroughTheControlPlane|TestRegionsJoinOnlineFromOneRegionWithData|TestHotRowsApplierNeverDeadlocksWithApplications|TestIndexEmbeddedThreeRegions|TestCountersKeepEveryIncrement)$$
test-race:
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /integration)
	POLYREGION_TEST_RACE=1 $(GO) test $(TESTFLAGS) -run '$(RACE_TESTS)' ./integration/

# test-newer-pg runs the integration tests whose behaviour depends on the
# server's version, and the core guarantees, on newer PostgreSQL releases
# than the system's (server binaries from the npm registry:
# .ci/setup-newer-pg), each in databases of another locale than the
# system's run (the C locale). NEWER_PGS lists MAJOR:LOCALE pairs; LOCALE
# as POLYREGION_TEST_LOCALE takes it (C, an operating system locale, or
# icu:TAG).
NEWER_PGS ?= 17:icu:en-US 18:C.UTF-8
NEWER_PG_TESTS ?= ^(TestReaderDecodesOnlyWhatItShips|TestKillReplicatorsMidStreamExactlyOnce|TestConcurrentOverlappingWritesConverge|TestCountersKeepEveryIncrement|TestApplierWaitsForTheReaderHoldingNoApplicationRow|TestAppliedInsertAfterUnversionedLocalDelete|TestTombstonesKeptUntilEveryRegionSawTheDelete|TestLargeTransactionInPartsAtomically|TestTruncateReplicatesAsDeletesOfWhatItSaw|TestEveryColumnTypeAndUnchangedToast|TestApplicationTriggersCannotReachTheReplicatorsTables|TestHotRowsApplierNeverDeadlocksWithApplications|TestUpgradeInPlaceWithABacklog|TestIndexEmbeddedThreeRegions|TestScenarioPartitionHeal|TestScenarioStopLongerThanWalSenderTimeout|TestHealthForDNSFailover|TestSequenceKeysDoNotCollideAcrossRegions|TestRegionsJoinOnlineFromOneRegionWithData|TestJoinRefusesARegionThatIsNotNew|TestJoinedRegionIndexesWhatItLoaded|TestReseedARegionPastTheOutboxCap|TestReseedARegionThroughTheControlPlane|TestALostSlotIsReportedUntilTheRegionIsReseeded|TestRegionsJoinAndLeaveThroughTheControlPlane|TestAPolicyChangeTakesEffectAtOneEpochEverywhere|TestJoinLoadsAsTheOwnerUnlessTheCopyRunsNoCode|TestATableAddedAtAnEpochSeedsEveryRegionsRows|TestATableSeededWhileWrittenEndsTheSameEverywhere|TestALongRunOfInsertsGoesInByCopy|TestALargeTransactionClashingWithALocalRowGoesIn|TestATypeMadeWithItsRowsReplicates|TestWhichTransactionsAreVisible|TestTextKeysReplicateInAnyCollation|TestACutJoinKeepsEveryIncrement|TestKeysDeletedAndWrittenAgainConverge|TestAppliersOfTwoSourcesWriteAnAbsentKeyInTurn|TestCounterRowsFromBeforeReplicationTakeIncrementsInPlace|TestAKeyBarrierWaitsOnlyForItsKeys|TestAReaderBarrierWithNothingToVersionWritesNothing|TestRowVersionKeysCompareInC|TestARandomKeyTableIsReadOncePerPass|TestTheRolesTimeoutsCutNoJoinAndNoLargeApply|TestOutboxPayloadsAreNotCompressedByPglz|TestRegionsWhoseTextEncodingsDifferRefuseEachOther|TestRegionsReplicateAcrossDatabaseEncodingsInUTF8Sessions|TestAReplicaIdentitySwitchedWhileRunningStopsTheReader|TestAChangeAnApplicationTriggerRefusesIsParked|TestACounterRowRecreatedWhileAPeersIncrementArrivesConverges)$$
test-newer-pg:
	@for v in $(NEWER_PGS); do \
		major=$${v%%:*}; locale=$${v#*:}; \
		bindir=$$(./.ci/setup-newer-pg $$major) || exit 1; \
		echo "integration tests on PostgreSQL $$major, locale $$locale"; \
		PG_BINDIR="$$bindir" POLYREGION_TEST_PG_MAJOR=$$major POLYREGION_TEST_LOCALE="$$locale" $(GO) test $(TESTFLAGS) -run '$(NEWER_PG_TESTS)' ./integration/ || exit 1; \
	done

unit:
	$(GO) test -count=1 -short ./conflict/... ./regions/... ./replicator/...

fuzz:
	$(GO) test -run=XXX -fuzz=FuzzDecideSymmetric -fuzztime=30s ./conflict/
	$(GO) test -run=XXX -fuzz=FuzzArrivalOrder -fuzztime=30s ./conflict/
	$(GO) test -run=XXX -fuzz=FuzzMerge -fuzztime=15s ./conflict/
	$(GO) test -run=XXX -fuzz=FuzzCounter -fuzztime=15s ./conflict/
	$(GO) test -run=XXX -fuzz=FuzzJoinColumnsIsASemilattice -fuzztime=15s ./conflict/

# bench: BENCH selects benchmarks (default all); BENCH_ROWS, BENCH_REPS and
# BENCH_LAG_SECONDS scale the data-plane benchmark, BENCH_JOIN_ROWS and
# BENCH_JOIN_PAIRS the join seed benchmark (BENCH_JOIN_KEY=uuid keys its
# table by random UUIDs), BENCH_STEADY_SECONDS the steady-load benchmark.
# .ci/setup-bench installs pglogical, its second baseline (not needed by the
# tests).
BENCH ?= .
bench: setup build
	@./.ci/setup-bench
	$(GO) test -run=XXX -bench='$(BENCH)' -benchtime=1x -timeout 60m ./integration/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

clean:
	rm -rf bin
