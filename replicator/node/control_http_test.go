package node

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

func TestControlChangesComeFromThisMachineOrCarryTheAdminToken(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	for _, tc := range []struct {
		name, token, remote, auth string
		want                      int
	}{
		{"loopback, no token configured", "", "127.0.0.1:5000", "", http.StatusNoContent},
		{"loopback v6", "", "[::1]:5000", "", http.StatusNoContent},
		{"another machine, no token configured", "", "10.0.0.7:5000", "", http.StatusForbidden},
		{"another machine with the token", "admin-token-0123456789", "10.0.0.7:5000", "Bearer admin-token-0123456789", http.StatusNoContent},
		{"a wrong token", "admin-token-0123456789", "10.0.0.7:5000", "Bearer nope", http.StatusForbidden},
		{"loopback without the configured token", "admin-token-0123456789", "127.0.0.1:5000", "", http.StatusForbidden},
	} {
		req := httptest.NewRequest(http.MethodPost, "/control/regions", nil)
		req.RemoteAddr = tc.remote
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		adminOnly(tc.token, "control changes", ok).ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s: %d, want %d (%s)", tc.name, rec.Code, tc.want, rec.Body.String())
		}
	}
}

// TestAPolicyChangeTheDataPlaneCannotTakeIsRefused: checked against the
// tables as the data plane runs them, also in a cluster whose founding
// epoch holds no policies (founded by an earlier release).
func TestAPolicyChangeTheDataPlaneCannotTakeIsRefused(t *testing.T) {
	c := regions.Cluster{Tables: []regions.Table{{Name: "public.hits", Policy: conflict.Policy{Counters: []string{"n"}}}, {Name: "public.kv"}}}
	older := regions.Membership{Epochs: []regions.Epoch{{Number: 1}}}
	founded := regions.Membership{Epochs: []regions.Epoch{{Number: 1, Policies: c.Policies()}}}
	ok := map[string]conflict.Policy{"public.hits": {Counters: []string{"n"}, Deletes: conflict.DeleteWins}, "public.kv": {Kind: conflict.RegionPriority}}
	for _, m := range []regions.Membership{older, founded} {
		if added, err := configurable(c, m, ok); err != nil || len(added) != 0 {
			t.Fatalf("a change of ranking refused: %v (adds %v)", err, added)
		}
		bad := map[string]conflict.Policy{"public.hits": {}, "public.kv": {}}
		if _, err := configurable(c, m, bad); !errors.Is(err, regions.ErrRefused) || !strings.Contains(err.Error(), "table public.hits: epoch 2 changes which columns merge") {
			t.Fatalf("a change of the counters: %v", err)
		}
		if _, err := configurable(c, m, map[string]conflict.Policy{"public.kv": {}}); err != nil {
			t.Fatalf("a change that drops a table: %v", err)
		}
		more := map[string]conflict.Policy{"public.extra": {}}
		for k, v := range ok {
			more[k] = v
		}
		if added, err := configurable(c, m, more); err != nil || len(added) != 1 || added[0] != "public.extra" {
			t.Fatalf("a change that adds a table: %v (adds %v)", err, added)
		}
		more["Bad"] = conflict.Policy{}
		if _, err := configurable(c, m, more); err == nil || !strings.Contains(err.Error(), `table "Bad"`) {
			t.Fatalf("a change that adds a badly named table: %v", err)
		}
	}
}

// A witness holds no tables: a configuration change sent to it is refused
// with the reason, not failed on a database it does not have.
func TestAConfigurationChangeSentToAWitnessSaysWhy(t *testing.T) {
	routes := map[string]http.Handler{}
	controlRoutes(routes, Config{Region: "w1", Control: &ControlConfig{}}, nil)
	req := httptest.NewRequest(http.MethodPost, "/control/configure", strings.NewReader(`{"policies":{"public.extra":{}}}`))
	req.RemoteAddr = "127.0.0.1:5000"
	rec := httptest.NewRecorder()
	routes["POST /control/configure"].ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "w1 is a witness") {
		t.Fatalf("configure on a witness: %d %s", rec.Code, rec.Body.String())
	}
}

// The conflict report carries row images: not for whatever reaches the
// operations server's /health and /metrics.
func TestTheConflictReportIsServedLikeControlChanges(t *testing.T) {
	for _, tc := range []struct {
		name, token, remote string
	}{
		{"another machine, no token configured", "", "10.0.0.7:5000"},
		{"loopback without the configured token", "admin-token-0123456789", "127.0.0.1:5000"},
	} {
		h := reportHandler(Config{Region: "us", Control: &ControlConfig{AdminToken: tc.token}}, nil)
		req := httptest.NewRequest(http.MethodGet, "/conflicts/report", nil)
		req.RemoteAddr = tc.remote
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "conflict report requests") {
			t.Errorf("%s: %d %s, want 403 naming the conflict report", tc.name, rec.Code, rec.Body.String())
		}
	}
}
