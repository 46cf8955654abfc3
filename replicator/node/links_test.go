package node

import (
	"io"
	"net"
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

func TestLinksStopDoesNotWaitForAPeerThatDoesNotRead(t *testing.T) {
	l := &links{region: "us"}
	srv := httptest.NewServer(l)
	defer srv.Close()
	writing := make(chan struct{})
	stop := l.serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		for i := 0; ; i++ {
			if i == 4 {
				close(writing)
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	<-writing // it fills the socket buffers, and blocks: nobody reads
	time.Sleep(200 * time.Millisecond)
	began := time.Now()
	stop(100 * time.Millisecond)
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("stop took %s with a handler blocked writing to a peer that does not read", d)
	}
}
