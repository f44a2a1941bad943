// The Go side of the test: read a Modelfile as Ollama's parser does (values in "..." or """...""" may span lines,
// characters strconv.IsPrint rejects are dropped except newlines and tabs), then render each conversation as Ollama
// does: the Modelfile's SYSTEM goes first when the conversation has no system message, consecutive messages of one
// role are joined with a blank line, and a template that uses .Messages gets .System/.Messages, any other one turn of
// .System/.Prompt/.Response at a time, the last turn cut after .Response (and {{ .Response }} appended if absent).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"unicode"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Request struct {
	Modelfile     string      `json:"modelfile"`
	Conversations [][]Message `json:"conversations"`
}

type Result struct {
	Commands [][2]string `json:"commands"`
	Renders  []string    `json:"renders"`
}

func complete(v string) bool {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, `"""`) {
		return len(v) >= 6 && strings.HasSuffix(v, `"""`)
	}
	if strings.HasPrefix(v, `"`) {
		return len(v) >= 2 && strings.HasSuffix(v, `"`)
	}
	return true
}

func unquote(v string) string {
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, `"""`) {
		return v[3 : len(v)-3]
	}
	if strings.HasPrefix(v, `"`) {
		return v[1 : len(v)-1]
	}
	return v
}

func readModelfile(text string) [][2]string {
	var commands [][2]string
	runes := []rune(text)
	for i := 0; i < len(runes); {
		r := runes[i]
		if r == ' ' || r == '\t' || r == '\n' || r == '\r' {
			i++
			continue
		}
		if r == '#' {
			for i < len(runes) && runes[i] != '\n' {
				i++
			}
			continue
		}
		start := i
		for i < len(runes) && unicode.IsLetter(runes[i]) {
			i++
		}
		name := strings.ToLower(string(runes[start:i]))
		i++
		if name == "parameter" {
			start = i
			for i < len(runes) && runes[i] != ' ' {
				i++
			}
			name = string(runes[start:i])
			i++
		}
		var value []rune
		for ; i < len(runes); i++ {
			if runes[i] == '\n' && complete(string(value)) {
				break
			}
			if strconv.IsPrint(runes[i]) || runes[i] == '\n' || runes[i] == '\t' || runes[i] == '\r' {
				value = append(value, runes[i])
			}
		}
		if !complete(string(value)) {
			panic("unterminated value of " + name)
		}
		commands = append(commands, [2]string{name, unquote(string(value))})
	}
	return commands
}

func mentionsResponse(n parse.Node) bool {
	switch t := n.(type) {
	case *parse.PipeNode:
		for _, c := range t.Cmds {
			for _, a := range c.Args {
				if mentionsResponse(a) {
					return true
				}
			}
		}
	case *parse.FieldNode:
		for _, id := range t.Ident {
			if id == "Response" {
				return true
			}
		}
	}
	return false
}

// cutAfterResponse drops every node after the first {{ .Response }} in walk order. Ollama fails on a template whose
// .Response sits in a branch with an else part (the cut reaches the else list), so that is an error here too.
func cutAfterResponse(n parse.Node, cut *bool) parse.Node {
	if *cut {
		return nil
	}
	branch := func(b *parse.BranchNode) {
		b.List = cutAfterResponse(b.List, cut).(*parse.ListNode)
		if b.ElseList != nil {
			if *cut {
				panic(".Response inside a branch that has an else part: Ollama cannot cut this template")
			}
			b.ElseList = cutAfterResponse(b.ElseList, cut).(*parse.ListNode)
		}
	}
	switch t := n.(type) {
	case *parse.ListNode:
		var kept []parse.Node
		for _, c := range t.Nodes {
			if k := cutAfterResponse(c, cut); k != nil {
				kept = append(kept, k)
			}
		}
		t.Nodes = kept
	case *parse.IfNode:
		branch(&t.BranchNode)
	case *parse.RangeNode:
		branch(&t.BranchNode)
	case *parse.WithNode:
		branch(&t.BranchNode)
	case *parse.ActionNode:
		if mentionsResponse(t.Pipe) {
			*cut = true
		}
	}
	return n
}

func render(text string, system string, msgs []Message) string {
	if system != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
		msgs = append([]Message{{Role: "system", Content: system}}, msgs...)
	}
	var systems []string
	var joined []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if len(joined) > 0 && joined[len(joined)-1].Role == m.Role {
			joined[len(joined)-1].Content += "\n\n" + m.Content
		} else {
			joined = append(joined, &m)
		}
	}
	if !strings.Contains(text, "Messages") && !strings.Contains(text, "Response") {
		text += "{{ .Response }}"
	}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Parse(text))
	var out strings.Builder
	if strings.Contains(text, ".Messages") {
		values := map[string]any{"System": strings.Join(systems, "\n\n"), "Messages": joined, "Response": ""}
		if err := tmpl.Execute(&out, values); err != nil {
			panic(err)
		}
		return out.String()
	}
	sys, prompt, response := "", "", ""
	turn := func() {
		values := map[string]any{"System": sys, "Prompt": prompt, "Response": response}
		if err := tmpl.Execute(&out, values); err != nil {
			panic(err)
		}
		sys, prompt, response = "", "", ""
	}
	for _, m := range joined {
		switch m.Role {
		case "system":
			if prompt != "" || response != "" {
				turn()
			}
			sys = m.Content
		case "user":
			if response != "" {
				turn()
			}
			prompt = m.Content
		case "assistant":
			response = m.Content
		}
	}
	cut := false
	root := cutAfterResponse(tmpl.Tree.Root.Copy(), &cut).(*parse.ListNode)
	last := template.Must(template.New("").Option("missingkey=zero").AddParseTree("", &parse.Tree{Root: root}))
	if err := last.Execute(&out, map[string]any{"System": sys, "Prompt": prompt, "Response": response}); err != nil {
		panic(err)
	}
	return out.String()
}

func main() {
	var req Request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	data, err := os.ReadFile(req.Modelfile)
	if err != nil {
		panic(err)
	}
	result := Result{Commands: readModelfile(string(data))}
	text, system := "", ""
	for _, c := range result.Commands {
		switch c[0] {
		case "template":
			text = c[1]
		case "system":
			system = c[1]
		}
	}
	for _, conversation := range req.Conversations {
		result.Renders = append(result.Renders, render(text, system, conversation))
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
