// Map-reduce word statistics, the "count words in parallel" example of Python multiprocessing guides:
//
//     with Pool() as pool:
//         partial = pool.map(count_words, chunks)          # map: one Counter per chunk
//     total = sum(partial, Counter())                      # reduce, in the parent
//     print(total.most_common(10))
//
// The corpus is generated: sentences of words drawn from a fixed vocabulary with a Zipf distribution (the k-th
// most common word appears about 1/k as often as the first), split into chunks of whole lines. Each worker
// counts one chunk into a std::unordered_map<std::string, long> (standard containers travel as values); the
// parent adds the maps up, prints the top 10 and checks the totals against a serial count of the whole text.
//
//     ./wordcount            200 chunks of 20,000 words
//     ./wordcount --quick    20 chunks (the smoke test)
#include <procpool/procpool.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

using Counts = std::unordered_map<std::string, long>;

// The map step: counts the words of one chunk, lower-cased, punctuation stripped.
Counts count_words(const std::string& text) {
    Counts counts;
    std::string word;
    for (const char c : text + ' ') {
        if (std::isalpha(static_cast<unsigned char>(c))) {
            word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        } else if (!word.empty()) {
            ++counts[word];
            word.clear();
        }
    }
    return counts;
}

// The reduce step.
void add(Counts& total, const Counts& part) {
    for (const auto& [word, n] : part) total[word] += n;
}

// ---- a deterministic corpus -------------------------------------------------------------------------------------
constexpr int kVocabulary = 1000;

std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Word of rank k: the base-12 digits of a permutation of k, plus 12, spelled as syllables ("sapo", "nekati"...);
// all distinct.
std::string vocabulary_word(int k) {
    static const char* const kSyllables[] = {"ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "po", "da", "fu"};
    std::string word;
    for (int n = k * 337 % kVocabulary + 12; n > 0; n /= 12) word.insert(0, kSyllables[n % 12]);
    return word;
}

// Chunk `index`: `words` words in sentences of 3 to 14 words, "Kalo mi sati, ..., vone." one per line.
std::string make_chunk(int index, int words, const std::vector<std::string>& vocabulary,
                       const std::vector<double>& cumulative) {
    std::uint64_t state = static_cast<std::uint64_t>(index) + 1;
    std::string text;
    int in_sentence = 0, sentence_length = 0;
    for (int w = 0; w < words; ++w) {
        const double u = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53 * cumulative.back();
        const auto rank = std::upper_bound(cumulative.begin(), cumulative.end(), u) - cumulative.begin();
        std::string word = vocabulary[static_cast<std::size_t>(std::min<std::ptrdiff_t>(rank, kVocabulary - 1))];
        if (in_sentence == 0) {
            sentence_length = 3 + static_cast<int>(splitmix64(state) % 12);
            word[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(word[0])));
        }
        text += word;
        if (++in_sentence == sentence_length || w + 1 == words) {
            text += ".\n";
            in_sentence = 0;
        } else {
            text += splitmix64(state) % 8 == 0 ? ", " : " ";
        }
    }
    return text;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const int chunks = quick ? 20 : 200, words_per_chunk = 20'000;

    procpool::Pool pool;

    std::vector<std::string> vocabulary;
    std::vector<double> cumulative;  // Zipf weights 1/k, summed
    for (int k = 0; k < kVocabulary; ++k) {
        vocabulary.push_back(vocabulary_word(k));
        cumulative.push_back((cumulative.empty() ? 0.0 : cumulative.back()) + 1.0 / (k + 1));
    }
    std::vector<std::string> corpus;
    corpus.reserve(static_cast<std::size_t>(chunks));
    for (int c = 0; c < chunks; ++c) corpus.push_back(make_chunk(c, words_per_chunk, vocabulary, cumulative));

    // Map in the workers, reduce here.
    const std::vector<Counts> partial = pool.map(count_words, corpus);
    Counts total;
    for (const Counts& part : partial) add(total, part);

    std::vector<std::pair<std::string, long>> top(total.begin(), total.end());
    std::sort(top.begin(), top.end(), [](const auto& a, const auto& b) {
        return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    long words = 0;
    for (const auto& [word, n] : top) words += n;
    std::printf("%ld words, %zu distinct, in %d chunks counted by %zu workers\n\n", words, total.size(), chunks,
                pool.size());
    std::printf("rank  word            count   share   Zipf\n");
    for (std::size_t i = 0; i < 10 && i < top.size(); ++i) {
        std::printf("%4zu  %-12s %8ld  %5.2f%%  %5.2f%%\n", i + 1, top[i].first.c_str(), top[i].second,
                    100.0 * static_cast<double>(top[i].second) / static_cast<double>(words),
                    100.0 / static_cast<double>(i + 1) / cumulative.back());
    }

    // Check: one serial count over the whole text must give the same table.
    std::string whole;
    for (const std::string& chunk : corpus) whole += chunk;
    const Counts serial = count_words(whole);
    const bool ok = total == serial && words == static_cast<long>(chunks) * words_per_chunk &&
                    top.front().first == vocabulary.front();
    if (!ok) {
        std::fprintf(stderr, "FAILED: the map-reduce counts differ from a serial count\n");
        return 1;
    }
    std::printf("\nthe map-reduce counts match a serial count of the whole text\n");
    return 0;
}
