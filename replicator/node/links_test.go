package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestLinksServeTheControlPlaneWhateverTheDataPlaneDoes(t *testing.T) {
	l := &links{region: "us"}
	var control http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "control") })
	l.control.Store(&control)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		l.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/v1/stream"); code != http.StatusServiceUnavailable || !strings.Contains(body, "replication is not running in region us") {
		t.Fatalf("no data plane: %d %q", code, body)
	}
	if code, body := get("/v1/control/conn"); code != 200 || body != "control" {
		t.Fatalf("control without a data plane: %d %q", code, body)
	}

	// A long request (a stream) runs until the data plane stops; stop
	// lets it go on for the grace, then ends it and waits for it.
	started, ended := make(chan struct{}), make(chan time.Time, 1)
	stop := l.serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/ack" {
			io.WriteString(w, "acked")
			return
		}
		close(started)
		<-r.Context().Done()
		ended <- time.Now()
	}))
	if code, body := get("/v1/ack"); code != 200 || body != "acked" {
		t.Fatalf("data plane up: %d %q", code, body)
	}
	go get("/v1/stream")
	<-started
	began := time.Now()
	stop(150 * time.Millisecond)
	select {
	case at := <-ended:
		if d := at.Sub(began); d < 150*time.Millisecond {
			t.Fatalf("the stream was ended after %s, before its grace", d)
		}
	default:
		t.Fatal("stop returned before the stream's handler did")
	}
	if code, _ := get("/v1/ack"); code != http.StatusServiceUnavailable {
		t.Fatalf("after stop: %d, want 503", code)
	}
}
