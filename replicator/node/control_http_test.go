package node

import (
	"net/http"
	"net/http/httptest"
	"testing"
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
		adminOnly(tc.token, ok).ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s: %d, want %d (%s)", tc.name, rec.Code, tc.want, rec.Body.String())
		}
	}
}
