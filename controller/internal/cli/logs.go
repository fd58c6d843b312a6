package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

func (a *app) logsCmd() *cobra.Command {
	var req ferryv1.GetJobLogsRequest
	cmd := &cobra.Command{
		Use:   "logs ROLLOUT [NODE]",
		Short: "Print the output of a rollout's jobs, one line per record",
		Long: `Print the output of a rollout's jobs: installs, rollbacks and undos,
one line per record:

  TIME NODE STREAM [STEP] TEXT

TIME is RFC 3339 (UTC, by the node's clock), STREAM is stdout or stderr
for what a check's command printed and ferry for what Ferry says about a
step (started, what it changed, why it failed, each undo and restore).
Where the controller cut a long job's middle, or a node dropped lines, a
marker line says how many.

-o json prints one JSON object per line (at, node_id, job_id, step,
stream, seq, text; cut_lines and cut_bytes on a marker), -o yaml one
document per record.`,
		Example: `  ferryctl logs ro-1a2b3c4d --failed          # why the failed nodes failed
  ferryctl logs ro-1a2b3c4d web-03 --step check
  ferryctl logs ro-1a2b3c4d -f -o json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.RolloutId = args[0]
			if len(args) == 2 {
				if req.NodeId != "" && req.NodeId != args[1] {
					return fmt.Errorf("node %s given twice, as an argument and as --node %s: give one", args[1], req.NodeId)
				}
				req.NodeId = args[1]
			}
			conn, err := a.connect()
			if err != nil {
				return err
			}
			stream, err := ferryv1.NewLogServiceClient(conn).GetJobLogs(cmd.Context(), &req)
			if err != nil {
				return err
			}
			p := logPrinter{w: a.stdout, format: a.output}
			for {
				m, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return err
				}
				for _, r := range m.GetRecords() {
					if err := p.print(r); err != nil {
						return err
					}
				}
				if m.GetText() != "" { // an older controller
					fmt.Fprint(a.stdout, m.GetText())
				}
			}
			if p.n == 0 && !a.machine() {
				fmt.Fprintf(a.stderr, "no output stored for %s\n", describeLogRequest(&req))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&req.NodeId, "node", "", "only this node")
	cmd.Flags().BoolVar(&req.Failed, "failed", false, "only nodes that failed or are unreachable")
	cmd.Flags().StringVar(&req.Step, "step", "", `only lines of steps whose name contains this (case-insensitive), e.g. "check"`)
	cmd.Flags().BoolVarP(&req.Follow, "follow", "f", false, "keep printing until the jobs end")
	return cmd
}

func describeLogRequest(req *ferryv1.GetJobLogsRequest) string {
	s := "rollout " + req.GetRolloutId()
	if req.GetNodeId() != "" {
		s += " node " + req.GetNodeId()
	}
	if req.GetStep() != "" {
		s += fmt.Sprintf(" step %q", req.GetStep())
	}
	return s
}

// logTime is how records print their time: RFC 3339 in UTC, to the
// millisecond, fixed width.
const logTime = "2006-01-02T15:04:05.000Z07:00"

// logPrinter writes records as text lines, JSON lines or YAML documents.
type logPrinter struct {
	w      io.Writer
	format string
	n      int
}

// logDoc is a record as -o json and -o yaml print it: proto field names,
// the stream as its word, the time as RFC 3339.
type logDoc struct {
	At       string `json:"at,omitempty" yaml:"at,omitempty"`
	NodeID   string `json:"node_id" yaml:"node_id"`
	JobID    string `json:"job_id,omitempty" yaml:"job_id,omitempty"`
	Step     string `json:"step,omitempty" yaml:"step,omitempty"`
	Stream   string `json:"stream" yaml:"stream"`
	Seq      uint64 `json:"seq" yaml:"seq"`
	Text     string `json:"text" yaml:"text"`
	CutLines uint64 `json:"cut_lines,omitempty" yaml:"cut_lines,omitempty"`
	CutBytes uint64 `json:"cut_bytes,omitempty" yaml:"cut_bytes,omitempty"`
}

func logStreamWord(s ferryv1.LogStream) string {
	if s == ferryv1.LogStream_LOG_STREAM_UNSPECIFIED {
		return "-"
	}
	return enumword.Of(s)
}

func (p *logPrinter) print(r *ferryv1.LogRecord) error {
	p.n++
	at := ""
	if r.GetAt() != nil {
		at = r.GetAt().AsTime().UTC().Format(logTime)
	}
	doc := logDoc{At: at, NodeID: r.GetNodeId(), JobID: r.GetJobId(), Step: r.GetStep(), Stream: logStreamWord(r.GetStream()),
		Seq: r.GetSeq(), Text: r.GetText(), CutLines: r.GetCutLines(), CutBytes: r.GetCutBytes()}
	switch p.format {
	case outJSON:
		enc := json.NewEncoder(p.w) // one compact object a line
		enc.SetEscapeHTML(false)
		return enc.Encode(doc)
	case outYAML:
		if p.n > 1 {
			if _, err := fmt.Fprintln(p.w, "---"); err != nil {
				return err
			}
		}
		return yaml.NewEncoder(p.w).Encode(doc)
	}
	_, err := fmt.Fprintln(p.w, formatLogLine(r))
	return err
}

// formatLogLine is a record as text: TIME NODE STREAM [STEP] TEXT.
func formatLogLine(r *ferryv1.LogRecord) string {
	var b strings.Builder
	if r.GetAt() != nil {
		b.WriteString(r.GetAt().AsTime().UTC().Format(logTime))
	} else {
		b.WriteString(strings.Repeat("-", len("2006-01-02T15:04:05.000Z"))) // as wide as a time
	}
	// One record, one line: a stray carriage return or newline cannot
	// start a line that looks like another record.
	esc := strings.NewReplacer("\r", `\r`, "\n", `\n`)
	fmt.Fprintf(&b, " %s %-6s ", r.GetNodeId(), logStreamWord(r.GetStream()))
	if r.GetStep() != "" {
		fmt.Fprintf(&b, "[%s] ", esc.Replace(shortStep(r.GetStep())))
	}
	b.WriteString(esc.Replace(r.GetText()))
	return b.String()
}

// maxStepShown bounds a step name in a text line (a check's command can be
// long); -o json has it whole.
const maxStepShown = 60

func shortStep(s string) string {
	if r := []rune(s); len(r) > maxStepShown {
		return string(r[:maxStepShown-1]) + "…"
	}
	return s
}

func failedNodes(r *ferryv1.Rollout) int {
	n := 0
	for _, nj := range r.GetNodes() {
		switch nj.GetOutcome() {
		case ferryv1.NodeOutcome_NODE_OUTCOME_FAILED, ferryv1.NodeOutcome_NODE_OUTCOME_UNREACHABLE:
			n++
		}
	}
	return n
}
