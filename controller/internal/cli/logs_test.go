package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestLogLines(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 12, 2, 7, 30, 1, 234e6, time.FixedZone("CET", 3600)))
	recs := []*ferryv1.LogRecord{
		{Seq: 1, At: at, NodeId: "web-1", JobId: "ro-1/job/web-1", Stream: ferryv1.LogStream_LOG_STREAM_FERRY, Text: "install of go@1.20.3 started"},
		{Seq: 2, At: at, NodeId: "web-1", JobId: "ro-1/job/web-1", Step: "check: go version", Stream: ferryv1.LogStream_LOG_STREAM_STDERR, Text: "bash: go: not found\nforged line"},
		{Seq: 3, NodeId: "web-1", JobId: "ro-1/job/web-1", Stream: ferryv1.LogStream_LOG_STREAM_FERRY, Text: "[... 40 lines cut ...]", CutLines: 40, CutBytes: 4000},
	}
	want := []string{
		"2026-12-02T06:30:01.234Z web-1 ferry  install of go@1.20.3 started",
		`2026-12-02T06:30:01.234Z web-1 stderr [check: go version] bash: go: not found\nforged line`,
		"------------------------ web-1 ferry  [... 40 lines cut ...]",
	}
	var text, js bytes.Buffer
	tp, jp := logPrinter{w: &text, format: "table"}, logPrinter{w: &js, format: "json"}
	for _, r := range recs {
		if err := tp.print(r); err != nil {
			t.Fatal(err)
		}
		if err := jp.print(r); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Split(strings.TrimSuffix(text.String(), "\n"), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("text:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	lines := strings.Split(strings.TrimSuffix(js.String(), "\n"), "\n")
	if len(lines) != len(recs) {
		t.Fatalf("-o json printed %d lines for %d records:\n%s", len(lines), len(recs), js.String())
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(lines[1]), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["at"] != "2026-12-02T06:30:01.234Z" || doc["stream"] != "stderr" || doc["step"] != "check: go version" || doc["node_id"] != "web-1" || doc["text"] != "bash: go: not found\nforged line" {
		t.Errorf("-o json record: %v", doc)
	}
	if err := json.Unmarshal([]byte(lines[2]), &doc); err != nil || doc["cut_lines"] != float64(40) {
		t.Errorf("-o json marker: %v, %v", doc, err)
	}

	var ys bytes.Buffer
	yp := logPrinter{w: &ys, format: outYAML}
	for _, r := range recs {
		if err := yp.print(r); err != nil {
			t.Fatal(err)
		}
	}
	dec := yaml.NewDecoder(&ys)
	var docs []map[string]any
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			break
		}
		docs = append(docs, d)
	}
	if len(docs) != len(recs) || docs[1]["stream"] != "stderr" || docs[1]["at"] != "2026-12-02T06:30:01.234Z" {
		t.Errorf("-o yaml: %d documents %v", len(docs), docs)
	}
}
