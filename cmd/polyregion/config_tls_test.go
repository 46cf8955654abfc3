package main

import (
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator/link"
)

const tlsPeerToken = "0123456789abcdef0123"

// A tls block next to an http:// URL would be ignored and the token sent
// in cleartext: the configuration is refused, naming the entry, for a
// region's peers and witnesses and for a witness's regions.
func TestConfigRefusesATLSBlockWithAnHTTPURL(t *testing.T) {
	region := func(peerURL, witnesses string) string {
		return "region: us\ndatabase: postgres://polyregion@127.0.0.1:5432/app\nlisten: 127.0.0.1:7480\nregions: [us, eu]\n" +
			"peers: [{id: eu, url: \"" + peerURL + "\", token: " + tlsPeerToken + ", tls: {ca_file: /etc/polyregion/ca.pem}}]\n" +
			"tables: [{name: public.kv}]\ncontrol: {dir: /var/lib/polyregion/control}\n" + witnesses
	}
	refused := func(name string, err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, want)
		} else if strings.Contains(err.Error(), tlsPeerToken) {
			t.Errorf("%s: the error shows the token: %v", name, err)
		}
	}

	_, _, err := loadConfig(writeConfig(t, region("http://127.0.0.1:7490", "")))
	refused("peer", err, "peers[0] (eu): url http://127.0.0.1:7490 has no TLS but the peer has a tls block: use https://")

	cfg, _, err := loadConfig(writeConfig(t, region("https://127.0.0.1:7490", "")))
	if err != nil {
		t.Fatalf("peer over https:// with a tls block: %v", err)
	}

	_, _, err = loadConfig(writeConfig(t, region("https://127.0.0.1:7490",
		"witnesses: [{id: w1, url: \"http://127.0.0.1:7500\", token: "+tlsPeerToken+", tls: {server_name: w1.example}}]\n")))
	refused("witness", err, "witnesses[0] (w1): url http://127.0.0.1:7500 has no TLS but the peer has a tls block: use https://")

	_, _, err = loadConfig(writeConfig(t, region("ftp://127.0.0.1:7490", "")))
	refused("other scheme", err, "peers[0] (eu): url ftp://127.0.0.1:7490: want https://")

	_, _, err = loadWitnessConfig(writeConfig(t, "witness: w1\nlisten: 127.0.0.1:7500\ncontrol: {dir: /var/lib/polyregion/control}\n"+
		"regions: [{id: us, url: \"http://127.0.0.1:7480\", token: "+tlsPeerToken+", tls: {ca_file: /etc/polyregion/ca.pem}}]\n"))
	refused("witness's region", err, "regions[0] (us): url http://127.0.0.1:7480 has no TLS but the peer has a tls block: use https://")

	// A configuration built in code is checked the same way.
	tlsFiles := link.TLSFiles{CAFile: "/etc/polyregion/ca.pem"}
	peers := cfg
	peers.Peers = append(peers.Peers[:0:0], peers.Peers...)
	peers.Peers[0].URL, peers.Peers[0].TLS = "http://127.0.0.1:7490", tlsFiles
	refused("Validate, peer", peers.Validate(), "peers[0] (eu): url http://127.0.0.1:7490 has no TLS but the peer has a tls block: use https://")
	witnesses := cfg
	witnesses.Witnesses = append(witnesses.Witnesses, witnesses.Peers[0])
	witnesses.Witnesses[0].ID, witnesses.Witnesses[0].URL, witnesses.Witnesses[0].TLS = "w1", "http://127.0.0.1:7500", tlsFiles
	refused("Validate, witness", witnesses.Validate(), "witnesses[0] (w1): url http://127.0.0.1:7500 has no TLS but the peer has a tls block: use https://")

	// Plaintext without any tls block stays allowed (loopback, private
	// networks), as does https:// without one (the system's roots).
	for _, ok := range []string{"http://127.0.0.1:7490", "https://127.0.0.1:7490"} {
		c := cfg
		c.Peers = append(c.Peers[:0:0], c.Peers...)
		c.Peers[0].URL, c.Peers[0].TLS = ok, link.TLSFiles{}
		if err := c.Validate(); err != nil {
			t.Errorf("%s without a tls block: %v", ok, err)
		}
	}
}
