// TempDir: a new folder under /tmp for one test, removed with everything in it when the object
// goes. Not thread-safe: one test owns it.
#ifndef KLDRIFT_SERVER_CORE_TESTING_TEMP_DIR_H_
#define KLDRIFT_SERVER_CORE_TESTING_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace kldrift {

class TempDir {
 public:
  // A folder named /tmp/PREFIX-XXXXXX.
  explicit TempDir(const std::string& prefix = "kldrift-test") {
    std::string name = "/tmp/" + prefix + "-XXXXXX";
    if (mkdtemp(name.data()) != nullptr) path_ = name;
  }
  ~TempDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // Empty if the folder could not be made (the test then fails where it first uses it).
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace kldrift

#endif  // KLDRIFT_SERVER_CORE_TESTING_TEMP_DIR_H_
