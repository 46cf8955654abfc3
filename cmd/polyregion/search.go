package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/polyregion/polyregion/indexer"
	"github.com/polyregion/polyregion/replicator/node"
)

// searchFile is the `search:` section: the regional search index the
// replicator keeps in step with the local tables.
type searchFile struct {
	// Kind is embedded (default), elasticsearch or opensearch.
	Kind         string   `yaml:"kind"`
	URLs         []string `yaml:"urls"`
	Username     string   `yaml:"username"`
	Password     string   `yaml:"password"`
	PasswordFile string   `yaml:"password_file"`
	APIKey       string   `yaml:"api_key"`
	APIKeyFile   string   `yaml:"api_key_file"`
	CACert       string   `yaml:"ca_cert"`
	// Dir holds the embedded index.
	Dir           string        `yaml:"dir"`
	BatchDocs     int           `yaml:"batch_docs"`
	FlushInterval time.Duration `yaml:"flush_interval"`
	Indices       []indexFile   `yaml:"indices"`
	// BatchBytes and MaxDocumentBytes bound a bulk request's documents and
	// one document, in bytes (0: the defaults).
	BatchBytes       int `yaml:"batch_bytes"`
	MaxDocumentBytes int `yaml:"max_document_bytes"`
}

type indexFile struct {
	Table   string            `yaml:"table"`
	Index   string            `yaml:"index"`
	Columns []string          `yaml:"columns"`
	Exclude []string          `yaml:"exclude"`
	Rename  map[string]string `yaml:"rename"`
}

// secret returns an inline value or a file's content (trimmed), not both.
func secret(key, inline, file string) (string, error) {
	if file == "" {
		return inline, nil
	}
	if inline != "" {
		return "", fmt.Errorf("search.%s: set it or %s_file, not both", key, key)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("search.%s_file: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// toNode validates the section; nil when there is none.
func (s *searchFile) toNode() (*node.SearchConfig, error) {
	if s == nil {
		return nil, nil
	}
	pw, err := secret("password", s.Password, s.PasswordFile)
	if err != nil {
		return nil, err
	}
	key, err := secret("api_key", s.APIKey, s.APIKeyFile)
	if err != nil {
		return nil, err
	}
	kind := s.Kind
	if kind == "" {
		kind = indexer.KindEmbedded
	}
	sc := &node.SearchConfig{
		Backend: indexer.BackendConfig{Kind: kind, URLs: s.URLs, Username: s.Username, Password: pw, APIKey: key, CACert: s.CACert, Dir: s.Dir},
		Feed: indexer.Config{BatchDocs: s.BatchDocs, FlushInterval: s.FlushInterval,
			BatchBytes: s.BatchBytes, MaxDocumentBytes: s.MaxDocumentBytes},
	}
	if err := sc.Backend.Validate(); err != nil {
		return nil, err
	}
	if s.BatchDocs < 0 || s.BatchDocs > 100000 {
		return nil, fmt.Errorf("search.batch_docs: between 1 and 100000, got %d", s.BatchDocs)
	}
	if s.FlushInterval < 0 {
		return nil, fmt.Errorf("search.flush_interval: must be positive, got %s", s.FlushInterval)
	}
	if len(s.Indices) == 0 {
		return nil, fmt.Errorf("search.indices: list the tables to index (table, index)")
	}
	for _, x := range s.Indices {
		spec := indexer.IndexSpec{Table: x.Table, Index: x.Index, Columns: x.Columns, Exclude: x.Exclude, Rename: x.Rename}
		if spec.Index == "" {
			_, name, _ := strings.Cut(x.Table, ".")
			spec.Index = strings.ToLower(name)
		}
		sc.Feed.Indices = append(sc.Feed.Indices, spec)
	}
	// Region and Database are filled by the node; validate the rest now.
	probe := sc.Feed
	probe.Region, probe.Database = "r", "x"
	if err := probe.Validate(); err != nil {
		return nil, err
	}
	return sc, nil
}
